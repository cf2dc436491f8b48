"""A failed start leaves no empty run folder behind; a folder with real outputs is never deleted."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

#: files written before the first step (configs, hyper-parameters): not outputs of a run
START_FILES = ("config.yaml", "config_*.yaml", "hparams.yaml")


def new_folders(logger: Any) -> list[Path]:
    """The folders a logger will create for this run that do not exist yet, deepest first.

    Args:
        logger: A Lightning logger; those without a ``log_dir`` (W&B) add nothing.

    Returns:
        The run's log folder and its missing parents, deepest first.
    """
    log_dir = getattr(logger, "log_dir", None)
    if not log_dir:
        return []
    missing, path = [], Path(log_dir).absolute()
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    return missing


def _only_start_files(folder: Path) -> bool:
    """Whether every file under ``folder`` is a start-up file (so the run wrote nothing)."""
    for path in folder.rglob("*"):
        if path.is_file() or path.is_symlink():
            if not any(path.match(pattern) for pattern in START_FILES):
                return False
    return True


def remove_unused(folders: list[Path]) -> list[Path]:
    """Delete the folders of a failed start that hold nothing but start-up files.

    Args:
        folders: Folders created by this run, deepest first (:func:`new_folders`).

    Returns:
        The folders deleted.
    """
    removed = []
    for folder in folders:
        if folder.is_dir() and _only_start_files(folder):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed
