"""The base of every method: hyper-parameters, optimiser, per-stage hooks and shared outputs."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from torch import Tensor

from segfm.data.io.atomic import check_outside_data
from segfm.errors import ConfigError
from segfm.evaluation import log_image, overlay, save_png
from segfm.evaluation.harness import ProtocolHarness
from segfm.evaluation.interactive import ClassPrompt
from segfm.sample import Batch, CaseMeta


def run_dir(trainer: pl.Trainer) -> Path:
    """The folder of this run's files (every rank calls it: it broadcasts).

    The logger's ``log_dir`` for CSV and TensorBoard; for loggers without one (W&B), the folder
    Lightning puts the checkpoints under, ``<save_dir>/<name>/<version>``, rather than the
    ``save_dir`` that every run of that logger shares.
    """
    log_dir = trainer.log_dir
    logger = trainer.loggers[0] if trainer.loggers else None
    if logger is None or isinstance(logger, CSVLogger | TensorBoardLogger) or not log_dir:
        return Path(log_dir or "outputs")
    version = logger.version
    version = version if isinstance(version, str) else f"version_{version}"
    return Path(trainer.strategy.broadcast(str(Path(log_dir) / str(logger.name) / version)))


class BaseTask(pl.LightningModule, ABC):
    """Shared behaviour of segfm methods (modelled on torchgeo's ``BaseTask``).

    ``__init__`` saves the hyper-parameters and calls :meth:`configure_models`,
    :meth:`configure_losses` and :meth:`configure_metrics`. Subclasses fill those hooks and one
    ``_step(batch, batch_idx, stage)`` shared by training and validation.

    Args:
        lr: Learning rate of AdamW.
        weight_decay: Weight decay of AdamW.
        lr_schedule: ``constant`` (MedSAM's recipe), ``cosine`` annealing to zero over the
            run's optimiser steps, or ``multistep``: the rate times ``lr_gamma`` at each epoch of
            ``lr_milestones`` (SAM-Med3D's recipe).
        lr_milestones: Epochs at which ``multistep`` lowers the rate.
        lr_gamma: Factor of each ``multistep`` drop.
        output_dir: Folder for test/predict outputs (tables, predictions, overlays); defaults to
            the run's log folder.
        export_official: Write the official checkpoint format beside every Lightning checkpoint
            (for methods that have one).
        protocol: How ``test`` evaluates: ``native`` (the method's own published inference),
            ``interactive`` (the CVPR 2025 box-then-clicks protocol) or ``text`` (the CVPR 2025
            text-guided protocol), the latter two run by
            :class:`segfm.evaluation.harness.ProtocolHarness` for every method alike.
        protocol_clicks: Click steps of the interactive protocol (5 in the challenge).
    """

    #: metric the checkpoint callback monitors by default, and its mode
    monitor = "val_loss"
    mode = "min"
    #: name of the official checkpoint format (``segfm export --format``), if the family has one
    official_format: str | None = None

    def __init__(
        self,
        lr: float = 1e-4,
        weight_decay: float = 0.01,
        lr_schedule: Literal["constant", "cosine", "multistep"] = "constant",
        lr_milestones: tuple[int, ...] = (),
        lr_gamma: float = 0.1,
        output_dir: str | None = None,
        export_official: bool = True,
        protocol: Literal["native", "interactive", "text"] = "native",
        protocol_clicks: int = 5,
    ) -> None:
        super().__init__()
        if lr <= 0:
            msg = f"lr must be positive, got {lr}"
            raise ValueError(msg)
        if weight_decay < 0:
            msg = f"weight_decay must be >= 0, got {weight_decay}"
            raise ValueError(msg)
        if lr_schedule == "multistep" and (
            not lr_milestones or list(lr_milestones) != sorted(set(lr_milestones))
        ):
            msg = f"lr_schedule multistep needs increasing lr_milestones, got {lr_milestones}"
            raise ValueError(msg)
        if protocol_clicks < 1:
            msg = f"protocol_clicks must be >= 1, got {protocol_clicks}"
            raise ValueError(msg)
        if not 0 < lr_gamma <= 1:
            msg = f"lr_gamma must be in (0, 1], got {lr_gamma}"
            raise ValueError(msg)
        self.save_hyperparameters()
        self.configure_models()
        self.configure_losses()
        self.configure_metrics()

    @abstractmethod
    def configure_models(self) -> None:
        """Build the networks (and load initial weights)."""

    def configure_losses(self) -> None:
        """Build the loss functions."""

    def configure_metrics(self) -> None:
        """Build the metric collections."""

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Parameter groups of the optimiser: every trainable parameter at the base learning rate.

        Override to give sub-networks their own learning rates.
        """
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]

    def configure_optimizers(self) -> Any:
        """AdamW over :meth:`parameter_groups` (frozen parameters left out) and the schedule."""
        groups = [g for g in self.parameter_groups() if g["params"]]
        optimizer = torch.optim.AdamW(
            groups, lr=self.hparams["lr"], weight_decay=self.hparams["weight_decay"]
        )
        schedule = self.hparams.get("lr_schedule", "constant")
        if schedule == "cosine":
            steps = max(1, int(self.trainer.estimated_stepping_batches))
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
            return {
                "optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
            }
        if schedule == "multistep":
            scheduler = torch.optim.lr_scheduler.MultiStepLR(
                optimizer,
                milestones=list(self.hparams["lr_milestones"]),
                gamma=self.hparams["lr_gamma"],
            )
            return {
                "optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"},
            }
        return optimizer

    def configure_callbacks(self) -> list[Callback]:
        """Random states in checkpoints (exact resume) and the official-format export."""
        from segfm.callbacks import OfficialExport, RandomStateCheckpoint

        callbacks: list[Callback] = [RandomStateCheckpoint()]
        if self.official_format is not None and self.hparams.get("export_official", True):
            callbacks.append(OfficialExport(self.official_format))
        return callbacks

    @abstractmethod
    def _step(self, batch: Batch, batch_idx: int, stage: str) -> Tensor:
        """Loss and metrics of one training or validation batch."""

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        """One training step."""
        return self._step(batch, batch_idx, "train")

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        """One validation step."""
        self._step(batch, batch_idx, "val")

    # ------------------------------------------------------------------ testing
    def native_test_step(self, batch: Batch, batch_idx: int) -> None:
        """The method's own test inference and scoring (``protocol: native``)."""
        msg = f"{type(self).__name__} has no native test; use protocol interactive or text"
        raise ConfigError(msg)

    def on_native_test_epoch_start(self) -> None:
        """Set up the native test (empty tables)."""

    def on_native_test_epoch_end(self) -> None:
        """Write the native test's tables."""

    def segment_interactive(
        self,
        image: Tensor,
        spacing: list[float],
        prompts: dict[int, ClassPrompt],
        previous: Tensor | None,
    ) -> Tensor:
        """Segment the prompted classes of a volume (the interactive protocol's interface).

        Args:
            image: Intensities ``[D, H, W]`` as the data module yields them.
            spacing: Voxel size in mm, ``(z, y, x)``.
            prompts: Per class id its box and accumulated clicks.
            previous: The previous step's label map ``[D, H, W]``, or None at the first step.

        Returns:
            Label map ``[D, H, W]`` (int64).
        """
        msg = f"{type(self).__name__} cannot be prompted with boxes and clicks"
        raise ConfigError(msg)

    def segment_text(
        self, image: Tensor, spacing: list[float], prompts: dict[int, str], meta: CaseMeta
    ) -> Tensor:
        """Segment the classes named by text prompts (the text protocol's interface).

        Args:
            image: Intensities ``[D, H, W]``.
            spacing: Voxel size in mm, ``(z, y, x)``.
            prompts: Text per class id.
            meta: The case's metadata (e.g. ``instance``: split the prediction into instances).

        Returns:
            Label map ``[D, H, W]`` (int64) with the prompts' class ids.
        """
        msg = (
            f"{type(self).__name__} takes no text prompts; test it with "
            "--model.init_args.protocol interactive (or native)"
        )
        raise ConfigError(msg)

    @property
    def protocol(self) -> str:
        """The test protocol: ``native``, ``interactive`` or ``text``."""
        return str(self.hparams.get("protocol", "native"))

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        """The native test, or one step of the evaluation protocol."""
        if self.protocol == "native":
            self.native_test_step(batch, batch_idx)
            return
        segment = self.segment_interactive if self.protocol == "interactive" else self.segment_text
        for score in self._harness.run_batch(batch, segment):
            self.log(
                f"test_{self.protocol}_score", score, batch_size=1, on_epoch=True, sync_dist=True
            )

    def _check_output_dir(self) -> None:
        """Refuse a predictions folder inside the data folder (it could overwrite inputs)."""
        if not self.hparams.get("save_predictions", True):
            return
        datamodule = getattr(getattr(self, "_trainer", None), "datamodule", None)
        root = getattr(datamodule, "root", None)
        if root is not None:
            check_outside_data(self.output_dir / "predictions", root)

    def on_predict_epoch_start(self) -> None:
        """Check where predictions go before writing any."""
        self._check_output_dir()

    def on_test_epoch_start(self) -> None:
        """Start the native test or a fresh protocol harness."""
        self._check_output_dir()
        if self.protocol == "native":
            self.on_native_test_epoch_start()
            return
        name = "segment_interactive" if self.protocol == "interactive" else "segment_text"
        if getattr(type(self), name) is getattr(BaseTask, name):
            kind = "boxes and clicks" if self.protocol == "interactive" else "text"
            msg = (
                f"{type(self).__name__} cannot be prompted with {kind}, so it cannot run the "
                f"{self.protocol} protocol; choose another --model.init_args.protocol"
            )
            raise ConfigError(msg)
        self._harness = ProtocolHarness(
            self.protocol,  # type: ignore[arg-type]
            self.output_dir,
            num_clicks=int(self.hparams.get("protocol_clicks", 5)),
            tolerance=float(self.hparams.get("nsd_tolerance", 2.0)),
            save_predictions=bool(self.hparams.get("save_predictions", True)),
            num_overlays=min(2, int(self.hparams.get("num_overlays", 2))),
        )

    def on_test_epoch_end(self) -> None:
        """Write the native test's or the protocol's tables and overlays."""
        if self.protocol == "native":
            self.on_native_test_epoch_end()
            return
        self._harness.merge(self.gather_rows)
        if self.trainer.is_global_zero:
            self._finish_protocol()

    def _finish_protocol(self) -> None:
        trainer = self.trainer
        self._harness.finish(trainer.loggers, step=trainer.global_step)
        rank_zero_info(
            f"\n{self.protocol} protocol ({self.output_dir}):\n" + self._harness.summary_markdown()
        )

    def setup(self, stage: str) -> None:
        """Resolve :attr:`output_dir` on every rank (finding the run's folder is a collective)."""
        self._output_dir: Path | None = None
        self._output_dir = self.output_dir

    @property
    def output_dir(self) -> Path:
        """Where test and predict outputs go: ``output_dir`` or the run's log folder."""
        if self.hparams.get("output_dir"):
            return Path(self.hparams["output_dir"])
        if getattr(self, "_output_dir", None) is not None:
            return self._output_dir  # type: ignore[return-value]
        trainer = getattr(self, "_trainer", None)
        if trainer is not None and trainer.log_dir:
            return run_dir(trainer)
        return Path("outputs")

    def gather_rows(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The table rows of every process (all of them call this), in rank order."""
        trainer = getattr(self, "_trainer", None)
        if trainer is None or trainer.world_size == 1 or not torch.distributed.is_initialized():
            return rows
        parts: list[list[dict[str, Any]] | None] = [None] * trainer.world_size
        torch.distributed.all_gather_object(parts, rows)
        return [row for part in parts for row in part or []]

    @rank_zero_only
    def save_overlay(
        self, name: str, image: np.ndarray, prediction: np.ndarray, reference: np.ndarray | None
    ) -> Path:
        """Write an overlay PNG under ``<output_dir>/overlays`` and send it to the loggers."""
        picture = overlay(image, prediction, reference)
        path = save_png(picture, self.output_dir / "overlays" / f"{name}.png")
        trainer = getattr(self, "_trainer", None)
        if trainer is not None:
            log_image(trainer.loggers, f"overlays/{name}", picture, step=trainer.global_step)
        return path
