"""Callback drawing the learning curve of a fit into its run folder, after every epoch."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

from segfm.utils.files import atomic_path
from segfm.utils.line_chart import write_line_charts
from segfm.utils.run_dir import run_dir


class LearningCurve(Callback):
    """``learning_curve.png`` and ``learning_curve.csv`` in the run folder, kept up to date.

    After each epoch (its validation included) the epoch's values of every logged scalar go to
    the CSV (one row per epoch); the PNG shows the losses (names ending in ``loss``) in one chart
    and the scores (``val_score``, ``val_dsc``, ``val_nsd``, ``train_dice``, ...) in another.
    Both are rewritten atomically, so an interrupted fit leaves the curve of its last epoch.

    Args:
        filename: Stem of the two files.
    """

    def __init__(self, filename: str = "learning_curve") -> None:
        self.filename = filename
        self.rows: list[dict[str, float]] = []

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Record the epoch and redraw (global rank zero; the run folder is found on all).

        A trainer without a logger has no run folder: nothing is written (rather than files in
        the working directory).
        """
        if not trainer.loggers:
            return
        folder = run_dir(trainer)
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        row = {"epoch": float(trainer.current_epoch + 1)}
        for name, value in trainer.callback_metrics.items():
            if value.numel() == 1 and not name.endswith("_step"):
                row[name.removesuffix("_epoch")] = float(value)
        self.rows = [r for r in self.rows if r["epoch"] != row["epoch"]] + [row]
        self.write(folder, type(pl_module).__name__)

    def write(self, folder: Path, title: str) -> None:
        """Write the CSV and the PNG of the rows so far into ``folder``."""
        names = sorted({k for r in self.rows for k in r} - {"epoch"})
        with atomic_path(folder / f"{self.filename}.csv") as tmp:
            with tmp.open("w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=["epoch", *names])
                writer.writeheader()
                writer.writerows(self.rows)
        losses = [n for n in names if n.endswith("loss")]
        scores = [n for n in names if n not in losses and not n.startswith("lr")]

        def series(keys: list[str]) -> dict[str, list[tuple[float, float]]]:
            out: dict[str, list[tuple[float, float]]] = {}
            for key in keys:
                values = [(r["epoch"], r.get(key, math.nan)) for r in self.rows if key in r]
                same = next((k for k, v in out.items() if v == values), None)
                if same is None:
                    out[key] = values
                else:  # one line for equal series (val_score is val_dsc in the box protocol)
                    out[f"{same} = {key}"] = out.pop(same)
            return out

        write_line_charts(
            folder / f"{self.filename}.png",
            f"{title}: learning curve",
            {"losses": series(losses), "scores": series(scores)},
        )
