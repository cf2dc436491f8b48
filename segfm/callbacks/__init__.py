"""Callbacks: components a method or a config adds to the trainer."""

from segfm.callbacks.official_export import OfficialExport
from segfm.callbacks.random_state import RandomStateCheckpoint

__all__ = ["OfficialExport", "RandomStateCheckpoint"]
