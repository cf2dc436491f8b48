"""NIfTI volumes as ``(Z, Y, X)`` arrays, the axis order of every segfm array.

nibabel returns voxel arrays in the file's own ``(X, Y, Z)`` order (``i, j, k``), and the affine
maps ``(i, j, k, 1)`` to world millimetres. :func:`read_nifti` transposes the array to
``(Z, Y, X)`` and reverses the voxel sizes to ``(z, y, x)``, but keeps the affine exactly as the
file has it. :func:`write_nifti` does the inverse, so a prediction made on the array of
:func:`read_nifti` and written with the same affine lies on the source grid voxel for voxel.
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError

from segfm.data.io.atomic import atomic_path, reported_write
from segfm.errors import DataError

_INT_TYPES = (np.uint8, np.int16, np.uint16, np.int32)


@dataclass(frozen=True)
class Volume:
    """A NIfTI volume in segfm's axis order.

    Attributes:
        array: Voxel values ``[Z, Y, X]`` with the file's stored dtype (scaling applied).
        affine: ``(4, 4)`` float64 voxel-to-world matrix of the file, for its ``(X, Y, Z)`` axes.
        spacing: Voxel size in mm in array order ``(z, y, x)``, from the header's zooms.
    """

    array: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, float, float]


def read_nifti(path: str | os.PathLike[str]) -> Volume:
    """Read a 3D NIfTI file.

    Args:
        path: ``.nii`` or ``.nii.gz`` file. Trailing axes of length 1 (``X, Y, Z, 1``) are dropped.

    Returns:
        The volume with its array in ``(Z, Y, X)`` order.

    Raises:
        DataError: If the file is missing, unreadable, not a single 3D volume, or its voxel sizes
            are not > 0 or its affine is singular.
    """
    path = Path(path)
    if not path.is_file():
        msg = f"{path} does not exist; check the path"
        raise DataError(msg)
    try:
        image = nib.load(path)
        data = np.asanyarray(image.dataobj)  # [X, Y, Z, ...]
        zooms = image.header.get_zooms()
        affine = np.asarray(image.affine, dtype=np.float64)
    except (OSError, EOFError, ValueError, zlib.error, ImageFileError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        msg = f"cannot read {path} ({reason}); re-export or re-download it as a complete NIfTI file"
        raise DataError(msg) from e
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        msg = (
            f"{path} has shape {data.shape}, not one 3D volume; "
            "store each channel or time point in its own file (<case>_0000, <case>_0001, ...)"
        )
        raise DataError(msg)
    # the shortest decimal that is the stored float32 (2.54, not 2.5399999618530273)
    spacing = tuple(float(str(np.float32(z))) for z in zooms[:3][::-1])
    sizes = np.asarray(spacing)
    if not (np.all(np.isfinite(sizes) & (sizes > 0)) and np.all(np.isfinite(affine))):
        msg = (
            f"{path} has voxel sizes {list(spacing)} mm (z, y, x) and affine {affine.tolist()}; "
            "fix its header (pixdim, qform / sform) to voxel sizes > 0 and re-save it"
        )
        raise DataError(msg)
    if abs(np.linalg.det(affine[:3, :3])) <= 0:
        msg = f"{path} has a singular affine {affine.tolist()}; fix its qform / sform, re-save it"
        raise DataError(msg)
    return Volume(np.ascontiguousarray(data.transpose(2, 1, 0)), affine, spacing)  # [Z, Y, X]


def write_nifti(path: str | os.PathLike[str], array: np.ndarray, affine: np.ndarray) -> None:
    """Write a ``(Z, Y, X)`` array as a NIfTI file, atomically.

    Args:
        path: Destination ``.nii.gz`` (compressed) or ``.nii`` file.
        array: Voxel values ``[Z, Y, X]``. Booleans are stored as uint8 and 64-bit integers as
            the smallest of uint8, int16, uint16, int32 that holds them (NIfTI readers rarely
            accept int64).
        affine: ``(4, 4)`` voxel-to-world matrix for the file's ``(X, Y, Z)`` axes, e.g. the
            ``affine`` of the :class:`Volume` the array came from.

    Raises:
        ValueError: If ``array`` is not 3D or ``affine`` is not ``(4, 4)``.
        DataError: If the file cannot be written (nothing is left under its name then).
    """
    array = np.asarray(array)
    affine = np.asarray(affine, dtype=np.float64)
    if array.ndim != 3:
        msg = f"write_nifti needs a 3D (Z, Y, X) array, got shape {array.shape}"
        raise ValueError(msg)
    if affine.shape != (4, 4):
        msg = f"write_nifti needs a (4, 4) affine, got shape {affine.shape}"
        raise ValueError(msg)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    elif array.dtype in (np.int64, np.uint64):
        lo, hi = (int(array.min()), int(array.max())) if array.size else (0, 0)
        fits = [t for t in _INT_TYPES if np.iinfo(t).min <= lo and hi <= np.iinfo(t).max]
        array = array.astype(fits[0] if fits else np.int32)
    image = nib.Nifti1Image(array.transpose(2, 1, 0), affine)  # [X, Y, Z]
    image.header.set_xyzt_units("mm", "sec")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    with reported_write(path), atomic_path(path) as tmp:
        nib.save(image, tmp)
