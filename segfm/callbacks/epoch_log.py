"""Callback printing one line per epoch where no progress bar is drawn (output to a log file)."""

from __future__ import annotations

import sys
import time
from typing import IO

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback


class EpochLog(Callback):
    """One line per training epoch: the epoch, its losses and validation scores, its time.

    Lightning's progress bar redraws one terminal line; with the output redirected to a file it
    writes nothing a person can follow, and a long ``segfm fit`` looks hung after the model
    summary. This callback prints, on global rank zero, after each epoch's validation::

        epoch 3/14  train_loss 0.0912  val_dice 0.8804  val_loss 0.1079  (21.3 s)

    Args:
        stream: Where the lines go (standard output by default).
        always: Print even when ``stream`` is a terminal (where the progress bar shows it).
    """

    def __init__(self, stream: IO[str] | None = None, always: bool = False) -> None:
        self.stream = stream
        self.always = always
        self._start = 0.0

    def _out(self) -> IO[str]:
        return self.stream if self.stream is not None else sys.stdout

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Start the epoch's clock."""
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Print the epoch's line (validation of the epoch has run by now)."""
        out = self._out()
        if not trainer.is_global_zero or (out.isatty() and not self.always):
            return
        scores = {
            name: float(value)
            for name, value in trainer.callback_metrics.items()
            if value.numel() == 1 and not name.endswith("_step")
        }
        total = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        parts = [f"epoch {trainer.current_epoch + 1}{total}"]
        parts += [f"{name.removesuffix('_epoch')} {v:.4g}" for name, v in sorted(scores.items())]
        seconds = time.perf_counter() - self._start
        print("  ".join(parts) + f"  ({seconds:.1f} s)", file=out, flush=True)
