"""Atomic file writes: a file appears under its final name complete, or not at all.

Every writer first writes a hidden temporary file in the destination folder
(``.tmp-<random>-<name>``, same extension so format-aware writers such as nibabel and numpy keep
working) and then moves it onto the final name with :func:`os.replace`, which is atomic on one
file system. An interrupted run therefore leaves at most ``.tmp-*`` files behind, which
:func:`remove_temporaries` sweeps away; readers skip names that start with a dot. A write that
fails (a full disk, a folder that cannot be written) raises :class:`~segfm.errors.DataError`
naming the file, and leaves the destination as it was.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from segfm.errors import DataError
from segfm.utils.files import TEMP_PREFIX, atomic_path, remove_temporaries

__all__ = [
    "TEMP_PREFIX",
    "atomic_path",
    "check_not_input",
    "check_outside_data",
    "remove_temporaries",
    "reported_write",
    "save_json",
    "save_npy",
    "save_npz",
]


@contextlib.contextmanager
def reported_write(path: str | os.PathLike[str]) -> Iterator[None]:
    """Turn an :class:`OSError` of the body into a one-line :class:`DataError` naming ``path``.

    Args:
        path: The file being written.

    Yields:
        Nothing; wrap the (atomic) write in it.

    Raises:
        DataError: If the body raises :class:`OSError` (full disk, read-only or missing folder).
    """
    try:
        yield
    except OSError as e:
        reason = e.strerror or str(e) or type(e).__name__
        msg = (
            f"cannot write {path} ({reason}); nothing was written there: free disk space or "
            "choose a writable folder"
        )
        raise DataError(msg) from e


def save_npy(path: str | os.PathLike[str], array: np.ndarray) -> None:
    """Write one array as ``.npy`` atomically.

    Args:
        path: Destination file.
        array: The array to store.
    """
    with reported_write(path), atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array, allow_pickle=False)


def save_npz(path: str | os.PathLike[str], **arrays: Any) -> None:
    """Write named arrays as a compressed ``.npz`` atomically.

    Args:
        path: Destination file.
        **arrays: The arrays to store, by name.
    """
    with reported_write(path), atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)


def save_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write an object as indented JSON atomically.

    Args:
        path: Destination file.
        obj: Anything :func:`json.dump` accepts.
    """
    with reported_write(path), atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2) + "\n")


def check_not_input(
    path: str | os.PathLike[str], inputs: Iterable[str | os.PathLike[str] | None]
) -> None:
    """Refuse to write an output file onto one of the input files.

    Args:
        path: The output file about to be written (e.g. a prediction).
        inputs: The files the output was computed from (a sample's ``meta["source"]`` ...);
            ``None`` entries are skipped.

    Raises:
        DataError: If ``path`` is one of ``inputs`` (after resolving links and ``..``).
    """
    target = Path(path).resolve()
    for source in inputs:
        if source is not None and Path(source).resolve() == target:
            msg = (
                f"{path} is an input file of this run and would be overwritten; refused: set "
                "--model.init_args.output_dir to a folder outside the data"
            )
            raise DataError(msg)


def check_outside_data(folder: str | os.PathLike[str], data_root: str | os.PathLike[str]) -> None:
    """Refuse an output folder that is the data folder or lies inside it.

    Outputs inside a dataset root overwrite its files or are read back as data by the next run
    (a ``predictions`` folder in a class-folder root would become a class).

    Args:
        folder: The output folder (e.g. ``<output_dir>/predictions``).
        data_root: The data module's ``root``.

    Raises:
        DataError: If ``folder`` is ``data_root`` or inside it.
    """
    out, root = Path(folder).resolve(), Path(data_root).resolve()
    if out == root or root in out.parents:
        msg = (
            f"output folder {folder} is inside the data folder {data_root}; refused so that no "
            "input is overwritten: set --model.init_args.output_dir to a folder outside it"
        )
        raise DataError(msg)
