"""Metrics, result tables, overlays and logging shared by every method."""

from segfm.evaluation.curves import auc, summarise_steps
from segfm.evaluation.image_logging import log_image, log_table
from segfm.evaluation.instances import instance_f1, split_binary
from segfm.evaluation.metrics import (
    dice,
    hd95,
    interactive_case_scores,
    semantic_case_scores,
    surface_dice,
)
from segfm.evaluation.overlay import overlay, save_png
from segfm.evaluation.scoring import load_case, pair_cases, score_case
from segfm.evaluation.table import CaseTable

__all__ = [
    "CaseTable",
    "auc",
    "dice",
    "hd95",
    "instance_f1",
    "interactive_case_scores",
    "load_case",
    "log_image",
    "log_table",
    "overlay",
    "pair_cases",
    "save_png",
    "score_case",
    "semantic_case_scores",
    "split_binary",
    "summarise_steps",
    "surface_dice",
]
