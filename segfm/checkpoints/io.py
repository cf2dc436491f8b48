"""Reading and writing checkpoint files safely.

:func:`load_file` never executes pickled code (``torch.load(weights_only=True)``) and turns every
failure into a one-line :class:`~segfm.errors.CheckpointError` naming the file and what to do.
:func:`save_file` writes atomically: the file appears complete under its name, or not at all.
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from segfm.errors import CheckpointError
from segfm.utils.files import atomic_path

# Harmless classes found in released checkpoints (SAM-Med3D stores its argparse options).
SAFE_GLOBALS: tuple[Any, ...] = (argparse.Namespace,)


def _first_line(error: BaseException, limit: int = 120) -> str:
    text = str(error).strip().splitlines()
    line = text[0] if text else type(error).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _corrupt(path: Path, reason: str) -> str:
    return (
        f"{path}: not a readable PyTorch checkpoint, probably truncated or corrupt ({reason}); "
        "copy or download it again"
    )


def load_file(path: str | os.PathLike[str], safe_globals: Sequence[Any] = ()) -> Any:
    """Load a PyTorch checkpoint onto the CPU without running pickled code.

    Args:
        path: ``.pth`` / ``.pt`` / ``.ckpt`` file.
        safe_globals: Extra classes the file may contain, besides tensors, containers,
            primitives and :data:`SAFE_GLOBALS`.

    Returns:
        The stored object (usually a dict of tensors or of nested dicts).

    Raises:
        CheckpointError: If the file is missing, unreadable, truncated or corrupt, or holds
            pickled objects other than tensors and plain data.
    """
    path = Path(path)
    if not path.exists():
        msg = f"{path}: no such checkpoint file; check the path"
        raise CheckpointError(msg)
    if path.is_dir():
        msg = f"{path}: is a folder, not a checkpoint file; pass the .pth/.ckpt file inside it"
        raise CheckpointError(msg)
    try:
        with torch.serialization.safe_globals([*SAFE_GLOBALS, *safe_globals]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        if found:  # a class or function outside the allowlist: never call it
            msg = (
                f"{path}: refused to load: it holds pickled objects ({found.group(1)}) other than "
                "tensors and plain data, which could run code; if you trust it, re-save only its "
                "state dict with torch.save"
            )
        else:
            msg = _corrupt(path, "invalid pickle data")
        raise CheckpointError(msg) from e
    except OSError as e:
        reason = e.strerror or _first_line(e)
        msg = f"{path}: cannot be read ({reason}); check the file and its permissions"
        raise CheckpointError(msg) from e
    except Exception as e:  # truncated zip, garbage bytes, empty file, ...
        raise CheckpointError(_corrupt(path, _first_line(e))) from e


def save_file(obj: Any, path: str | os.PathLike[str]) -> Path:
    """Write ``obj`` with :func:`torch.save` atomically.

    The data goes to a temporary file in the destination folder, is flushed to disk, and is
    then renamed onto ``path``. If anything fails (a full disk, an interrupt), the temporary
    file is removed and an existing file at ``path`` is left untouched.

    Args:
        obj: Anything :func:`torch.save` accepts (a state dict for segfm's own files).
        path: Destination; its folder is created if missing.

    Returns:
        ``path``.

    Raises:
        CheckpointError: If the file cannot be written.
    """
    path = Path(path)
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        reason = e.strerror or _first_line(e)
        msg = f"{path}: could not be written ({reason}); nothing was written there"
        raise CheckpointError(msg) from e
    return path
