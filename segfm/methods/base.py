"""The base of every method: hyper-parameters, optimiser, per-stage hooks and shared outputs."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor

from segfm.data.sample import Batch
from segfm.evaluation import log_image, overlay, save_png


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
        """The official-format export beside every checkpoint, when the method has a format."""
        if self.official_format is None or not self.hparams.get("export_official", True):
            return []
        from segfm.callbacks.official_export import OfficialExport

        return [OfficialExport(self.official_format)]

    @abstractmethod
    def _step(self, batch: Batch, batch_idx: int, stage: str) -> Tensor:
        """Loss and metrics of one training or validation batch."""

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        """One training step."""
        return self._step(batch, batch_idx, "train")

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        """One validation step."""
        self._step(batch, batch_idx, "val")

    @property
    def output_dir(self) -> Path:
        """Where test and predict outputs go: ``output_dir`` or the run's log folder."""
        if self.hparams.get("output_dir"):
            return Path(self.hparams["output_dir"])
        trainer = getattr(self, "_trainer", None)
        if trainer is not None and trainer.log_dir:
            return Path(trainer.log_dir)
        return Path("outputs")

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
