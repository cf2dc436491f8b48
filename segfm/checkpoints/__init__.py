"""Checkpoint files: safe reading, atomic writing, and one converter module per model family."""

from segfm.checkpoints.io import load_file, save_file

__all__ = ["load_file", "save_file"]
