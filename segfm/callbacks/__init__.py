"""Callbacks: components a method or a config adds to the trainer."""

from segfm.callbacks.official_export import OfficialExport

__all__ = ["OfficialExport"]
