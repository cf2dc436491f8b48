"""One image-logging interface for every Lightning logger."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np


def log_image(loggers: Iterable[Any], key: str, picture: np.ndarray, step: int = 0) -> list[str]:
    """Send an RGB picture to every logger that can show images.

    W&B (``log_image``) and TensorBoard (``experiment.add_image``) receive it; loggers without
    image support (CSV) are skipped, since the PNG files are in the run folder anyway.

    Args:
        loggers: The trainer's loggers.
        key: Name of the image in the dashboard.
        picture: RGB ``uint8`` array ``[H, W, 3]``.
        step: Global step to attach it to.

    Returns:
        Names of the loggers that received the picture.
    """
    received = []
    for logger in loggers:
        if hasattr(logger, "log_image"):
            logger.log_image(key=key, images=[picture], step=step)
        elif hasattr(getattr(logger, "experiment", None), "add_image"):
            logger.experiment.add_image(key, picture, global_step=step, dataformats="HWC")
        else:
            continue
        received.append(type(logger).__name__)
    return received


def log_table(
    loggers: Iterable[Any], key: str, columns: list[str], rows: list[list[Any]]
) -> list[str]:
    """Send a table to every logger that can show tables (W&B ``log_table``).

    Returns:
        Names of the loggers that received the table.
    """
    received = []
    for logger in loggers:
        if hasattr(logger, "log_table"):
            logger.log_table(key=key, columns=columns, data=rows)
            received.append(type(logger).__name__)
    return received
