"""Where a run's files go, for every logger Lightning has."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger


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
