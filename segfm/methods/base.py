"""The base of every method: hyper-parameters, optimiser, per-stage hooks and shared outputs."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from torchmetrics import MetricCollection

from segfm.data.io.atomic import check_outside_data
from segfm.errors import ConfigError, DataError
from segfm.evaluation.harness import ProtocolHarness
from segfm.evaluation.interactive import ClassPrompt
from segfm.evaluation.options import Evaluation, Protocol
from segfm.evaluation.predict import ClicksFile, PredictionWriter, protocol_prediction
from segfm.inference.cache import EmbeddingCache
from segfm.sample import Batch, CaseMeta
from segfm.utils import schedules
from segfm.utils.run_dir import run_dir


class BaseTask(pl.LightningModule, ABC):
    """Shared behaviour of segfm methods (modelled on torchgeo's ``BaseTask``).

    ``__init__`` saves the hyper-parameters and calls :meth:`configure_models`,
    :meth:`configure_losses` and :meth:`configure_metrics`. Subclasses fill those hooks and one
    ``_step(batch, batch_idx, stage)`` shared by training and validation. ``test`` runs one
    protocol of :class:`~segfm.evaluation.harness.ProtocolHarness` for every method alike;
    ``predict`` segments each volume from the same prompts (or from a clicks file) and writes it.

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
        protocol: How ``test`` evaluates: ``interactive`` (the CVPR 2025 box-then-clicks
            protocol), ``text`` (the CVPR 2025 text-guided protocol) or ``native``, an alias of
            the method's own published test (:attr:`native_protocol`).
        evaluation: Click count and rule, NSD tolerance and outputs of test and predict.
    """

    #: metric the checkpoint callback monitors by default, and its mode
    monitor = "val_loss"
    mode = "min"
    #: name of the official checkpoint format (``segfm export --format``), if the family has one
    official_format: str | None = None
    #: what ``protocol: native`` stands for
    native_protocol: ClassVar[Protocol] = Protocol("interactive")

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
        evaluation: Evaluation | None = None,
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
        if not 0 < lr_gamma <= 1:
            msg = f"lr_gamma must be in (0, 1], got {lr_gamma}"
            raise ValueError(msg)
        self.evaluation = evaluation if evaluation is not None else Evaluation()
        self.test_protocol = self.resolve_protocol(protocol, self.evaluation)
        self.save_hyperparameters()
        # option groups as the values in use, in plain dicts (checkpoints load with
        # torch.load(weights_only=True))
        for key, value in list(self.hparams.items()):
            group = self.__dict__.get(key) if value is None else value
            if is_dataclass(group) and not isinstance(group, type):
                self.hparams[key] = asdict(group)
        self.configure_models()
        self.configure_losses()
        self.configure_metrics()

    @classmethod
    def resolve_protocol(cls, name: str, evaluation: Evaluation) -> Protocol:
        """The protocol ``test`` runs: ``name`` (``native``: :attr:`native_protocol`) and clicks."""
        base = cls.native_protocol if name == "native" else Protocol(name)  # type: ignore[arg-type]
        clicks = base.clicks if evaluation.clicks is None else evaluation.clicks
        if base.name == "interactive" and not base.box and clicks < 1:
            msg = f"{cls.__name__}'s {name} protocol takes no box; set evaluation.clicks >= 1"
            raise ValueError(msg)
        return Protocol(base.name, clicks, base.box)

    @abstractmethod
    def configure_models(self) -> None:
        """Build the networks (and load initial weights)."""

    def configure_losses(self) -> None:
        """Build the loss functions."""

    def configure_metrics(self) -> None:
        """Build the metric collections."""

    def stage_metrics(self, metrics: MetricCollection) -> None:
        """Keep one copy of ``metrics`` per stage: ``train_metrics`` and ``val_metrics``.

        Each copy prefixes its names with the stage (``val_dice``).
        """
        self.train_metrics = metrics.clone(prefix="train_")
        self.val_metrics = metrics.clone(prefix="val_")

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
            steps = int(self.trainer.estimated_stepping_batches)
            return {"optimizer": optimizer, "lr_scheduler": schedules.cosine(optimizer, steps)}
        if schedule == "multistep":
            milestones, gamma = self.hparams["lr_milestones"], self.hparams["lr_gamma"]
            entry = schedules.multistep(optimizer, milestones, gamma)
            return {"optimizer": optimizer, "lr_scheduler": entry}
        return optimizer

    def configure_callbacks(self) -> list[Callback]:
        """Random states, the official-format export, a line per epoch and the learning curve.

        Random states in checkpoints give an exact resume; the official twin is written beside
        every checkpoint; :class:`~segfm.callbacks.EpochLog` prints a line per epoch where no
        progress bar is drawn; :class:`~segfm.callbacks.LearningCurve` keeps
        ``learning_curve.png`` / ``.csv`` in the run folder.
        """
        from segfm.callbacks import EpochLog, LearningCurve, OfficialExport, RandomStateCheckpoint

        callbacks: list[Callback] = [RandomStateCheckpoint(), EpochLog(), LearningCurve()]
        if self.official_format is not None and self.hparams.get("export_official", True):
            callbacks.append(OfficialExport(self.official_format))
        return callbacks

    @abstractmethod
    def _step(self, batch: Batch, batch_idx: int, stage: str) -> Tensor:
        """Loss and metrics of one training or validation batch."""

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        """One training step."""
        return self._step(batch, batch_idx, "train")

    def validation_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        """One validation step: the loss on a batch, or the test protocol on a volume.

        The second loader (``val_volumes``, see :meth:`setup`) yields whole validation volumes;
        each runs the test protocol and logs ``val_score``, ``val_dsc`` and ``val_nsd``.
        """
        if dataloader_idx == 1:
            self._validate_protocol(batch)
        else:
            self._step(batch, batch_idx, "val")

    def log(self, name: str, value: Any, *args: Any, **kwargs: Any) -> None:
        """Lightning's ``log``, without a ``/dataloader_idx_N`` suffix on validation names."""
        kwargs.setdefault("add_dataloader_idx", False)
        super().log(name, value, *args, **kwargs)

    def log_dict(self, dictionary: Any, *args: Any, **kwargs: Any) -> None:
        """Lightning's ``log_dict``, without a ``/dataloader_idx_N`` suffix."""
        kwargs.setdefault("add_dataloader_idx", False)
        super().log_dict(dictionary, *args, **kwargs)

    @property
    def validates_protocol(self) -> bool:
        """Whether ``fit`` scores the test protocol on the validation volumes."""
        name = "segment_interactive" if self.protocol == "interactive" else "segment_text"
        implemented = getattr(type(self), name) is not getattr(BaseTask, name)
        return self.evaluation.validate and implemented

    def on_validation_epoch_start(self) -> None:
        """A fresh in-memory harness for the validation volumes (nothing is written)."""
        self._val_harness = self._make_harness(save_predictions=False, num_overlays=0)

    def _validate_protocol(self, batch: Batch) -> None:
        segment = self.segment_interactive if self.protocol == "interactive" else self.segment_text
        for scores in self._val_harness.run_batch(batch, segment):
            for key, value in scores.items():
                self.log(f"val_{key}", value, batch_size=1, on_epoch=True, sync_dist=True)

    # -------------------------------------------------------------- segmenters
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
            "--model.init_args.protocol interactive"
        )
        raise ConfigError(msg)

    @property
    def protocol(self) -> str:
        """The test protocol's name, ``interactive`` or ``text`` (``native`` resolved)."""
        return self.test_protocol.name

    def case_state(self) -> dict[str, Any]:
        """What the method keeps between the interactive steps of one case, to carry over.

        The challenge runs every step in a fresh process; a state saved after one step and
        given to :meth:`restore_case_state` before the next makes that step compute what one
        process running all steps computes. By default: the embedding caches' entries.
        """
        return {
            name: value.entries()
            for name, value in vars(self).items()
            if isinstance(value, EmbeddingCache)
        }

    def restore_case_state(self, image: Tensor, state: dict[str, Any]) -> None:
        """Take back a :meth:`case_state` of the same case (``image`` as the next step gets it)."""
        network = getattr(self, "model", self)
        for name, entries in state.items():
            cache = vars(self).get(name)
            if isinstance(cache, EmbeddingCache):
                cache.restore(image, network, entries)

    # ------------------------------------------------------------------ testing
    def test_step(self, batch: Batch, batch_idx: int) -> None:
        """One step of the evaluation protocol."""
        segment = self.segment_interactive if self.protocol == "interactive" else self.segment_text
        for scores in self._harness.run_batch(batch, segment):
            for key, value in scores.items():
                name = f"test_{self.protocol}_score" if key == "score" else f"test_{key}"
                self.log(name, value, batch_size=1, on_epoch=True, sync_dist=True)

    def _check_output_dir(self) -> None:
        """Refuse a predictions folder inside the data folder (it could overwrite inputs)."""
        if not self.evaluation.save_predictions:
            return
        datamodule = getattr(getattr(self, "_trainer", None), "datamodule", None)
        root = getattr(datamodule, "root", None)
        if root is not None:
            check_outside_data(self.output_dir / "predictions", root)

    def on_test_epoch_start(self) -> None:
        """Start a fresh protocol harness."""
        self._check_output_dir()
        name = "segment_interactive" if self.protocol == "interactive" else "segment_text"
        if getattr(type(self), name) is getattr(BaseTask, name):
            kind = "boxes and clicks" if self.protocol == "interactive" else "text"
            msg = (
                f"{type(self).__name__} cannot be prompted with {kind}, so it cannot run the "
                f"{self.protocol} protocol; choose another --model.init_args.protocol"
            )
            raise ConfigError(msg)
        options = self.evaluation
        self._harness = self._make_harness(options.save_predictions, min(2, options.num_overlays))

    def _make_harness(self, save_predictions: bool, num_overlays: int) -> ProtocolHarness:
        """The harness of the test protocol (also scoring validation volumes during ``fit``)."""
        return ProtocolHarness(
            self.protocol,  # type: ignore[arg-type]
            self.output_dir,
            num_clicks=self.test_protocol.clicks,
            tolerance=self.evaluation.nsd_tolerance,
            seed=self.evaluation.seed,
            save_predictions=save_predictions,
            num_overlays=num_overlays,
            box=self.test_protocol.box,
            click_rule=self.evaluation.click_rule,
            boxes_from_mask=self.evaluation.boxes_from_mask,
        )

    def on_test_epoch_end(self) -> None:
        """Gather every rank's rows; rank zero writes the tables and overlays."""
        self._harness.merge(self.gather_rows)
        if self.trainer.is_global_zero:
            trainer = self.trainer
            self._harness.finish(trainer.loggers, step=trainer.global_step)
            rank_zero_info(
                f"\n{self.protocol} protocol ({self.output_dir}):\n"
                + self._harness.summary_markdown()
            )

    # --------------------------------------------------------------- predicting
    def on_predict_epoch_start(self) -> None:
        """Check where predictions go before writing any; a fresh writer."""
        self._check_output_dir()
        options = self.evaluation
        self._writer = PredictionWriter(
            self.output_dir, options.save_predictions, options.num_overlays
        )

    def predict_step(self, batch: Batch, batch_idx: int) -> list[Tensor]:
        """Segment each volume (see :meth:`predict_case`) and write it; returns the label maps."""
        if batch["image"].ndim != 5:
            msg = (
                f"{type(self).__name__} predicts volumes [B, 1, D, H, W], got "
                f"{tuple(batch['image'].shape)}; use a data module whose split yields volumes"
            )
            raise ValueError(msg)
        out = []
        for i in range(batch["image"].shape[0]):
            image = batch["image"][i, 0]
            label = batch["label"][i, 0] if "label" in batch else None
            meta = batch["meta"][i]
            classes = batch.get("classes", [{}] * (i + 1))[i]
            spacing = [float(v) for v in batch["spacing"][i]]
            case_id = str(meta.get("case_id", f"case_{batch_idx}_{i}"))
            seg = self.predict_case(case_id, image, label, spacing, meta, classes)
            self.write_case(case_id, seg, image, label, spacing, meta, classes)
            out.append(seg.cpu())
        return out

    def write_case(
        self,
        case_id: str,
        seg: Tensor,
        image: Tensor,
        label: Tensor | None,
        spacing: list[float],
        meta: dict[str, Any],
        classes: dict[int, Any],
    ) -> None:
        """Write a predicted volume (and an overlay while some are left), in ``predict``."""
        trainer = self.trainer
        self._writer.write(
            case_id,
            seg,
            image,
            label,
            spacing,
            meta,
            classes,
            loggers=trainer.loggers,
            step=trainer.global_step,
            overlays=trainer.is_global_zero,
        )

    def predict_case(
        self,
        case_id: str,
        image: Tensor,
        label: Tensor | None,
        spacing: list[float],
        meta: dict[str, Any],
        classes: dict[int, Any],
    ) -> Tensor:
        """One volume's label map: from the clicks file's prompts, else the test protocol's.

        With ``evaluation.clicks_file`` listing the case, its prompts are decoded in one step.
        Otherwise the test protocol's prompts are drawn from the label (boxes, then clicks
        against the errors) and the last step's prediction is the result.

        Raises:
            DataError: If the case has neither a label nor prompts in the clicks file.
        """
        path = self.evaluation.clicks_file
        if path:
            if getattr(self, "_clicks_file", None) is None:
                self._clicks_file = ClicksFile(path)
            user = self._clicks_file.prompts(case_id, classes, meta, tuple(image.shape))
            if user is not None:
                return self.segment_interactive(image, spacing, user, None)
        if label is None or not bool((label > 0).any()):
            msg = (
                f"case {case_id!r} has no label to draw prompts from and no prompts in the "
                f"clicks file ({path or 'no clicks_file given'}); add its clicks to "
                "--model.init_args.evaluation.clicks_file"
            )
            raise DataError(msg)
        segment = self.segment_interactive
        return protocol_prediction(
            segment, image, label, spacing, self.test_protocol, self.evaluation, meta
        )

    # ------------------------------------------------------------------ outputs
    def setup(self, stage: str) -> None:
        """Resolve :attr:`output_dir` on every rank; ask for validation volumes when scoring them.

        Finding the run's folder is a collective. In ``fit`` and ``validate`` the data module
        is told to yield its validation volumes too (:attr:`validates_protocol`).
        """
        self._output_dir: Path | None = None
        self._output_dir = self.output_dir
        datamodule = getattr(getattr(self, "_trainer", None), "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "protocol_validation"):
            datamodule.protocol_validation = self.validates_protocol

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
