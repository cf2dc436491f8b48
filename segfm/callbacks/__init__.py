"""Callbacks: components a method or a config adds to the trainer."""

from segfm.callbacks.epoch_log import EpochLog
from segfm.callbacks.learning_curve import LearningCurve
from segfm.callbacks.official_export import OfficialExport
from segfm.callbacks.random_state import RandomStateCheckpoint

__all__ = ["EpochLog", "LearningCurve", "OfficialExport", "RandomStateCheckpoint"]
