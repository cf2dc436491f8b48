"""Metrics, result tables, overlays and logging shared by every method."""

from segfm.evaluation.image_logging import log_image, log_table
from segfm.evaluation.metrics import case_scores, dice, surface_dice
from segfm.evaluation.overlay import overlay, save_png
from segfm.evaluation.table import CaseTable

__all__ = [
    "CaseTable",
    "case_scores",
    "dice",
    "log_image",
    "log_table",
    "overlay",
    "save_png",
    "surface_dice",
]
