"""Atomic file writes: a file appears under its final name complete, or not at all.

Every writer first writes a hidden temporary file in the destination folder
(``.tmp-<random>-<name>``, same extension so format-aware writers such as nibabel and numpy keep
working) and then moves it onto the final name with :func:`os.replace`, which is atomic on one
file system. An interrupted run therefore leaves at most ``.tmp-*`` files behind, which
:func:`remove_temporaries` sweeps away; readers skip names that start with a dot.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from segfm.utils.files import TEMP_PREFIX, atomic_path, remove_temporaries

__all__ = ["TEMP_PREFIX", "atomic_path", "remove_temporaries", "save_json", "save_npy", "save_npz"]


def save_npy(path: str | os.PathLike[str], array: np.ndarray) -> None:
    """Write one array as ``.npy`` atomically.

    Args:
        path: Destination file.
        array: The array to store.
    """
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array, allow_pickle=False)


def save_npz(path: str | os.PathLike[str], **arrays: Any) -> None:
    """Write named arrays as a compressed ``.npz`` atomically.

    Args:
        path: Destination file.
        **arrays: The arrays to store, by name.
    """
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)


def save_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write an object as indented JSON atomically.

    Args:
        path: Destination file.
        obj: Anything :func:`json.dump` accepts.
    """
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2) + "\n")
