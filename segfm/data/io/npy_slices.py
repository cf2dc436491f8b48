"""MedSAM's preprocessed layout: per-slice npy files and per-case npz volumes.

A root, as written by ``python -m data_tools.pre_ct_mr``, holds::

    imgs/<case>-NNN.npy   slice NNN of a case: (H, W, 3) float in [0, 1] or uint8, or (H, W)
    gts/<case>-NNN.npy    its labels: (H, W) integer class ids
    npz/<case>.npz        optional, the whole case: imgs uint8 (Z, Y, X), gts (Z, Y, X),
                          spacing (z, y, x) mm, affine (4, 4), source
    labels.json           optional, {"1": "liver", ...}

The case id is the file stem before the last ``-NNN``; its dataset is the text before the
first ``_`` (``CT_synth_000`` is case ``CT_synth_000`` of dataset ``CT``). Every problem with the
files raises :class:`~segfm.errors.DataError` naming the file.
"""

from __future__ import annotations

import os
import re
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from segfm.data.io.json_file import read_json
from segfm.errors import DataError

_SLICE = re.compile(r"^(?P<case>.+)-(?P<index>\d+)$")
_REDO = "re-create it with python -m data_tools.pre_ct_mr --overwrite"
_READ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)


@dataclass(frozen=True)
class SliceFiles:
    """The two files of one slice.

    Attributes:
        case_id: Case the slice belongs to.
        index: Index of the slice in the case volume (``NNN``).
        image: Image file.
        label: Label file.
    """

    case_id: str
    index: int
    image: Path
    label: Path


@dataclass(frozen=True)
class CaseVolume:
    """A whole case from ``npz/<case>.npz``.

    Attributes:
        image: float32 ``[1, D, H, W]`` in [0, 1] (the stored uint8 / 255).
        label: int64 ``[1, D, H, W]``.
        spacing: float64 ``(3,)`` voxel size in mm, ``(z, y, x)``.
        affine: float64 ``(4, 4)`` of the source NIfTI (for its ``(X, Y, Z)`` axes).
        source: Path of the source image.
    """

    image: np.ndarray
    label: np.ndarray
    spacing: np.ndarray
    affine: np.ndarray
    source: str


def dataset_of(case_id: str) -> str:
    """Dataset name of a case id: the text before its first ``_``."""
    return case_id.split("_", 1)[0]


def _npy_names(folder: Path) -> set[str]:
    """Names of the visible ``.npy`` files of a folder."""
    if not folder.is_dir():
        msg = f"{folder} is missing; the root needs imgs/ and gts/ (python -m data_tools.pre_ct_mr)"
        raise DataError(msg)
    return {n for n in os.listdir(folder) if n.endswith(".npy") and not n.startswith(".")}


def index_slices(root: str | os.PathLike[str]) -> dict[str, list[SliceFiles]]:
    """List the slices of a root, grouped by case.

    Args:
        root: Folder holding ``imgs/`` and ``gts/``.

    Returns:
        Case id to its slices sorted by index; cases sorted by id.

    Raises:
        DataError: If a folder is missing or empty, a file is misnamed, or an image has no
            label file or a label file no image.
    """
    root = Path(root)
    if not root.is_dir():
        msg = f"{root} does not exist; give the folder written by python -m data_tools.pre_ct_mr"
        raise DataError(msg)
    images, labels = _npy_names(root / "imgs"), _npy_names(root / "gts")
    for name in sorted(images - labels):
        msg = (
            f"{root / 'imgs' / name} has no mask {root / 'gts' / name}; add it or remove the image"
        )
        raise DataError(msg)
    for name in sorted(labels - images):
        msg = (
            f"{root / 'gts' / name} has no image {root / 'imgs' / name}; add it or remove the mask"
        )
        raise DataError(msg)
    if not images:
        msg = f"{root / 'imgs'} holds no .npy slice; run python -m data_tools.pre_ct_mr first"
        raise DataError(msg)
    cases: dict[str, list[SliceFiles]] = {}
    for name in sorted(images):
        match = _SLICE.match(name[: -len(".npy")])
        if match is None:
            msg = f"{root / 'imgs' / name} is not named <case>-NNN.npy; rename or remove it"
            raise DataError(msg)
        files = SliceFiles(
            match["case"], int(match["index"]), root / "imgs" / name, root / "gts" / name
        )
        cases.setdefault(files.case_id, []).append(files)
    return {c: sorted(s, key=lambda f: f.index) for c, s in sorted(cases.items())}


def _load_npy(path: Path) -> np.ndarray:
    """``np.load`` without pickles, failures reported as :class:`DataError`."""
    try:
        return np.load(path, allow_pickle=False)
    except _READ_ERRORS as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        msg = f"cannot read {path} ({reason}); {_REDO}"
        raise DataError(msg) from e


def read_slice(files: SliceFiles) -> tuple[np.ndarray, np.ndarray]:
    """Read one slice.

    Args:
        files: The slice's files. The image is ``(H, W, 3)`` float in [0, 1] (any float type) or
            uint8 (divided by 255), or ``(H, W)`` grey levels (repeated to three channels); the
            label is ``(H, W)`` of an integer type.

    Returns:
        The image float32 ``[3, H, W]`` in [0, 1] (a strided view of the file's ``(H, W, 3)``
        array) and the label int64 ``[1, H, W]``.

    Raises:
        DataError: If a file is unreadable or has the wrong shape, type or value range.
    """
    image, label = _load_npy(files.image), _load_npy(files.label)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3 or image.size == 0:
        msg = f"{files.image} has shape {image.shape}; slices must be (H, W, 3) or (H, W)"
        raise DataError(msg)
    if image.dtype == np.uint8:
        image = np.divide(image, np.float32(255), dtype=np.float32)
    elif np.issubdtype(image.dtype, np.floating):
        low, high = float(image.min()), float(image.max())
        if not (low >= -1e-3 and high <= 1 + 1e-3):  # also true for NaN
            msg = f"{files.image} holds values in [{low:g}, {high:g}]; float slices need [0, 1]"
            raise DataError(msg)
        image = image.astype(np.float32, copy=False)
    else:
        msg = f"{files.image} has dtype {image.dtype}; store uint8, or floats in [0, 1]"
        raise DataError(msg)
    if not (np.issubdtype(label.dtype, np.integer) or label.dtype == np.bool_):
        msg = f"{files.label} has dtype {label.dtype}; masks must hold integer class ids ({_REDO})"
        raise DataError(msg)
    if label.shape != image.shape[:2]:
        msg = f"{files.label} has shape {label.shape} but {files.image} has {image.shape}; {_REDO}"
        raise DataError(msg)
    # a channels-first view: the batch's stack makes the one copy
    return image.transpose(2, 0, 1), label[None].astype(np.int64)


def _open_npz(path: Path) -> Any:
    """``np.load`` of an npz, failures reported as :class:`DataError`."""
    if not path.is_file():
        msg = f"{path} does not exist; run python -m data_tools.pre_ct_mr to write case volumes"
        raise DataError(msg)
    try:
        return np.load(path, allow_pickle=False)
    except _READ_ERRORS as e:
        msg = f"cannot read {path} ({e}); {_REDO}"
        raise DataError(msg) from e


def _missing(path: Path, key: str) -> DataError:
    """The error for an npz without the array ``key``."""
    msg = f"{path} has no '{key}' array; {_REDO} (npz files of MedSAM's own script lack it)"
    return DataError(msg)


def _member(npz: Any, path: Path, key: str) -> np.ndarray:
    """One array of an open npz."""
    if key not in npz.files:
        raise _missing(path, key)
    try:
        return npz[key]
    except _READ_ERRORS as e:
        msg = f"cannot read '{key}' of {path} ({e}); {_REDO}"
        raise DataError(msg) from e


def _checked_spacing(spacing: np.ndarray, path: Path) -> np.ndarray:
    """The ``spacing`` array, checked to be three finite voxel sizes > 0 (mm)."""
    if spacing.shape != (3,) or not np.all(np.isfinite(spacing) & (spacing > 0)):
        msg = f"{path} has spacing {spacing.tolist()!r}, not 3 voxel sizes > 0 in mm; {_REDO}"
        raise DataError(msg)
    return spacing


def read_geometry(path: str | os.PathLike[str]) -> tuple[np.ndarray, tuple[int, ...]]:
    """Spacing and shape of a case volume, without decompressing its voxels.

    Args:
        path: ``npz/<case>.npz``.

    Returns:
        The spacing ``(z, y, x)`` in mm and the shape ``(Z, Y, X)`` of ``imgs``.

    Raises:
        DataError: If the file is unreadable, lacks ``spacing`` or ``imgs``, or its spacing is
            not three voxel sizes > 0.
    """
    path = Path(path)
    with _open_npz(path) as npz:
        spacing = _checked_spacing(_member(npz, path, "spacing").astype(np.float64), path)
        if "imgs" not in npz.files:
            raise _missing(path, "imgs")
        try:
            with npz.zip.open("imgs.npy") as f:
                version = np.lib.format.read_magic(f)
                read_header = getattr(np.lib.format, f"read_array_header_{version[0]}_0")
                shape = tuple(read_header(f)[0])
        except _READ_ERRORS as e:
            msg = f"cannot read 'imgs' of {path} ({e}); {_REDO}"
            raise DataError(msg) from e
    return spacing, shape


def read_volume(path: str | os.PathLike[str]) -> CaseVolume:
    """Read a whole case.

    Args:
        path: ``npz/<case>.npz`` with ``imgs`` uint8, ``gts`` integer, ``spacing`` and
            ``affine`` (``source`` optional: defaults to ``path``).

    Returns:
        The case volume.

    Raises:
        DataError: If the file is unreadable, its arrays disagree, its spacing is not three
            voxel sizes > 0 or its affine is singular.
    """
    path = Path(path)
    with _open_npz(path) as npz:
        imgs, gts = _member(npz, path, "imgs"), _member(npz, path, "gts")
        spacing = _member(npz, path, "spacing").astype(np.float64)
        affine = _member(npz, path, "affine").astype(np.float64)
        source = str(npz["source"]) if "source" in npz.files else str(path)
    if imgs.dtype != np.uint8 or not np.issubdtype(gts.dtype, np.integer):
        msg = f"{path} has imgs {imgs.dtype} and gts {gts.dtype}, not uint8 and integer; {_REDO}"
        raise DataError(msg)
    if imgs.ndim != 3 or gts.shape != imgs.shape or spacing.shape != (3,) or affine.shape != (4, 4):
        msg = (
            f"{path} has imgs {imgs.shape}, gts {gts.shape}, spacing {spacing.shape}, affine "
            f"{affine.shape}; expected (Z, Y, X) twice, (3,) and (4, 4); {_REDO}"
        )
        raise DataError(msg)
    _checked_spacing(spacing, path)
    if not (np.all(np.isfinite(affine)) and abs(np.linalg.det(affine[:3, :3])) > 0):
        msg = f"{path} has a singular or non-finite affine {affine.tolist()}; {_REDO}"
        raise DataError(msg)
    image = (imgs.astype(np.float32) / 255)[None]  # [1, D, H, W]
    return CaseVolume(image, gts[None].astype(np.int64), spacing, affine, source)


def read_label_names(root: str | os.PathLike[str]) -> dict[int, str]:
    """Class names of a root from ``labels.json``.

    Args:
        root: The root folder.

    Returns:
        Class id to name; empty if there is no ``labels.json``.

    Raises:
        DataError: If ``labels.json`` is not a JSON object of id to name.
    """
    path = Path(root) / "labels.json"
    if not path.exists():
        return {}
    fix = 'write it as {"1": "liver", ...}'
    content = read_json(path, fix)
    try:
        return {int(k): str(v) for k, v in content.items()}
    except ValueError as e:
        msg = f"{path} has a key that is not a class id ({e}); {fix}"
        raise DataError(msg) from e
