"""Array operations of the anatomical-embedding preprocessing (nibabel + scipy only).

Arrays are segfm's ``[Z, Y, X]``; affines are NIfTI's (``(x, y, z)`` index to RAS+ world), as
:func:`segfm.data.io.nifti.read_nifti` returns them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from nibabel import orientations
from scipy import ndimage

#: the original's axial morphology: disk radius, smallest object and largest hole (pixels)
DISK_RADIUS = 3
MIN_OBJECT = 2000
MAX_HOLE = 40000


def reorient(
    array_zyx: np.ndarray, affine: np.ndarray, codes: Sequence[str] = ("L", "P", "S")
) -> tuple[np.ndarray, np.ndarray]:
    """Permute/flip the voxel axes so that x, y, z point to ``codes`` (LPS+ as the original).

    No interpolation: values are moved, never mixed. The world stays NIfTI's RAS+, so the new
    affine is exact (the original instead negated affine rows, which mislabels the world).

    Args:
        array_zyx: ``[Z, Y, X]`` values.
        affine: NIfTI affine.
        codes: Target directions of the file's x, y, z axes.

    Returns:
        The reoriented array ``[Z', Y', X']`` and its NIfTI affine.
    """
    current = orientations.io_orientation(affine)
    change = orientations.ornt_transform(current, orientations.axcodes2ornt(tuple(codes)))
    xyz = array_zyx.transpose(2, 1, 0)
    new_affine = np.asarray(affine, np.float64) @ orientations.inv_ornt_aff(change, xyz.shape)
    moved = orientations.apply_orientation(xyz, change)
    return np.ascontiguousarray(moved.transpose(2, 1, 0)), new_affine


def _disk(radius: int) -> np.ndarray:
    r = np.arange(-radius, radius + 1)
    return (r[:, None] ** 2 + r[None, :] ** 2) <= radius**2


def _fill_small(mask: np.ndarray, smaller_than: int, value: bool) -> np.ndarray:
    """Set the components of ``mask != value`` smaller than ``smaller_than`` voxels to ``value``."""
    target = mask != value  # components to test
    labels, n = ndimage.label(target)
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    small = sizes < smaller_than
    small[0] = False
    out = mask.copy()
    out[small[labels]] = value
    return out


def body_mask(
    array_zyx: np.ndarray,
    threshold: float = -900.0,
    radius: int = DISK_RADIUS,
    min_object: int = MIN_OBJECT,
    max_hole: int = MAX_HOLE,
) -> np.ndarray:
    """Body mask as the original ``RemoveCTBed``: threshold, then per-slice morphology.

    Each axial slice is closed and opened with a disk, small objects are removed and small holes
    filled. Areas are in pixels of the slice (as the original, which ran on the source resolution).

    Args:
        array_zyx: ``[Z, Y, X]`` intensities (HU for CT).
        threshold: Intensities above it are body (-900 HU; the original's CT-MR script: -300).
        radius: Disk radius of closing/opening in pixels.
        min_object: Components smaller than this (pixels) are removed.
        max_hole: Holes smaller than this (pixels) are filled.

    Returns:
        bool ``[Z, Y, X]``.
    """
    mask = np.asarray(array_zyx) > threshold
    disk = _disk(radius)
    out = np.zeros_like(mask)
    for z in range(mask.shape[0]):
        s = ndimage.binary_closing(mask[z], disk, border_value=0)
        s = ndimage.binary_opening(s, disk, border_value=0)
        s = _fill_small(s, min_object, False)  # drop small objects
        out[z] = _fill_small(s, max_hole, True)  # fill small holes
    return out


def crop_box(mask: np.ndarray, margin: int = 2) -> tuple[slice, slice, slice] | None:
    """Bounding box of ``mask`` grown by ``margin`` voxels (None if the mask is empty)."""
    where = np.argwhere(mask)
    if len(where) == 0:
        return None
    lo = np.maximum(where.min(axis=0) - margin, 0)
    hi = np.minimum(where.max(axis=0) + margin + 1, mask.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))


def crop_affine(affine: np.ndarray, box: tuple[slice, slice, slice]) -> np.ndarray:
    """NIfTI affine of a ``[Z, Y, X]`` crop starting at ``box``."""
    shift = np.eye(4)
    shift[:3, 3] = [box[2].start, box[1].start, box[0].start]  # (x, y, z) index order
    return np.asarray(affine, np.float64) @ shift
