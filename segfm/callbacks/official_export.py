"""Callback writing the official checkpoint format beside every Lightning checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.fabric.plugins import CheckpointIO
from lightning.pytorch.callbacks import Callback

from segfm.checkpoints.formats import export_state_dict, get_format


class _ExportingCheckpointIO(CheckpointIO):
    """Delegates to the strategy's checkpoint IO, then writes the official file beside it.

    Wrapping the IO plugin, rather than one ``ModelCheckpoint``, covers every checkpoint the
    trainer saves (top-k, last, manual ``trainer.save_checkpoint``) and removes the official
    twin when a checkpoint is rotated out. The strategy calls it on global rank zero only.
    """

    def __init__(self, inner: CheckpointIO, format_name: str) -> None:
        self.inner = inner
        self.format_name = format_name

    @staticmethod
    def twin(path: str | Path) -> Path:
        return Path(path).with_suffix(".pth")

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        self.inner.save_checkpoint(checkpoint, path, storage_options=storage_options)
        export_state_dict(checkpoint["state_dict"], self.format_name, self.twin(path))

    def load_checkpoint(self, path: Any, map_location: Any | None = None, **kwargs: Any) -> Any:
        return self.inner.load_checkpoint(path, map_location=map_location, **kwargs)

    def remove_checkpoint(self, path: Any) -> None:
        self.inner.remove_checkpoint(path)
        self.twin(path).unlink(missing_ok=True)

    def teardown(self) -> None:
        self.inner.teardown()


class OfficialExport(Callback):
    """Keep an official-format file next to each saved checkpoint and one at the end of fit.

    ``last.ckpt`` gets ``last.pth``, ``epoch=3-step=40.ckpt`` gets ``epoch=3-step=40.pth``, and
    fit's end writes ``final.pth`` in the checkpoint folder. Files are written atomically by
    rank zero only.

    Args:
        format_name: Official format (see ``segfm.checkpoints.formats.FORMATS``).
        final_name: File stem of the export written when fit ends.
    """

    def __init__(self, format_name: str, final_name: str = "final") -> None:
        get_format(format_name)
        self.format_name = format_name
        self.final_name = final_name
        self._wrapped: tuple[Any, CheckpointIO] | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Wrap the strategy's checkpoint IO for the duration of fit."""
        if stage != "fit" or isinstance(trainer.strategy.checkpoint_io, _ExportingCheckpointIO):
            return
        inner = trainer.strategy.checkpoint_io
        trainer.strategy.checkpoint_io = _ExportingCheckpointIO(inner, self.format_name)
        self._wrapped = (trainer.strategy, inner)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Write ``final.pth`` from the weights fit ended with."""
        if not trainer.is_global_zero:
            return
        folder = self.checkpoint_folder(trainer)
        export_state_dict(
            pl_module.state_dict(), self.format_name, folder / f"{self.final_name}.pth"
        )

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Give the strategy its own checkpoint IO back."""
        if self._wrapped is not None:
            strategy, inner = self._wrapped
            strategy.checkpoint_io = inner
            self._wrapped = None

    @staticmethod
    def checkpoint_folder(trainer: pl.Trainer) -> Path:
        """The folder of the trainer's checkpoints."""
        callback = trainer.checkpoint_callback
        dirpath = getattr(callback, "dirpath", None)
        if dirpath:
            return Path(dirpath)
        return Path(trainer.log_dir or trainer.default_root_dir) / "checkpoints"
