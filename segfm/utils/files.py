"""Atomic file writing: outputs appear whole or not at all."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

#: temporary files start with this (hidden, and swept by :func:`remove_temporaries`)
TEMP_PREFIX = ".tmp-"


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto ``path`` on success.

    The temporary file is removed if the body raises, so an interrupted or failed write (a full
    disk, a crash) never leaves a partial file under the final name.

    Args:
        path: The final file path. Its folder is created if missing.

    Yields:
        The temporary path to write to, ``.tmp-<random>-<name>``: hidden, and ending like the
        target so format-aware writers (nibabel, numpy) keep working.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=f"-{path.name}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def remove_temporaries(folder: str | Path) -> None:
    """Delete the temporary files an interrupted writer left in ``folder`` (not recursive).

    Args:
        folder: Folder to clean; nothing happens if it does not exist.
    """
    folder = Path(folder)
    if folder.is_dir():
        for tmp in folder.glob(f"{TEMP_PREFIX}*"):
            tmp.unlink(missing_ok=True)
