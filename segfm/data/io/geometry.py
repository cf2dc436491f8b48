"""Voxel grids in world space: canonical orientation, isotropic grids, resampling between grids.

A grid is an affine and an array shape. As in :func:`segfm.data.io.nifti.read_nifti`, arrays are
indexed ``[z, y, x]`` while the affine maps the file's ``(x_index, y_index, z_index, 1)`` to world
millimetres, so the affine's column ``0`` belongs to the array's *last* axis. Every function here
takes and returns affines in that convention and points in array order ``(z, y, x)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from nibabel import orientations
from scipy import ndimage

_XYZ = [2, 1, 0, 3]  # swaps the affine's index columns between (x, y, z) and (z, y, x) order


def _zyx(affine: np.ndarray) -> np.ndarray:
    """The ``(4, 4)`` map of array indices ``(z, y, x, 1)`` to world mm."""
    return np.asarray(affine, dtype=np.float64)[:, _XYZ]


def voxel_size(affine: np.ndarray) -> np.ndarray:
    """Voxel size in mm of a grid, in array order.

    Args:
        affine: ``(4, 4)`` affine (read_nifti convention).

    Returns:
        float64 ``[3]``: the ``(z, y, x)`` spacing.
    """
    return np.linalg.norm(_zyx(affine)[:3, :3], axis=0)


def grid_map(from_affine: np.ndarray, to_affine: np.ndarray) -> np.ndarray:
    """The ``(4, 4)`` map of ``(z, y, x, 1)`` indices of one grid to indices of another.

    Args:
        from_affine: Affine of the grid the indices are given on.
        to_affine: Affine of the grid they are wanted on.

    Returns:
        float64 ``(4, 4)``: ``inv(to) @ from`` in array axis order.
    """
    return np.linalg.solve(_zyx(to_affine), _zyx(from_affine))


def map_points(
    points_zyx: np.ndarray, from_affine: np.ndarray, to_affine: np.ndarray
) -> np.ndarray:
    """Move voxel coordinates from one grid to another through world space.

    Args:
        points_zyx: float ``[N, 3]`` voxel coordinates ``(z, y, x)`` on the ``from`` grid.
        from_affine: Affine of that grid.
        to_affine: Affine of the target grid.

    Returns:
        float64 ``[N, 3]``: the same world points as ``(z, y, x)`` voxel coordinates of the target.
    """
    points = np.asarray(points_zyx, dtype=np.float64).reshape(-1, 3)
    matrix = grid_map(from_affine, to_affine)
    return points @ matrix[:3, :3].T + matrix[:3, 3]


def resample(
    array_zyx: np.ndarray,
    affine: np.ndarray,
    target_affine: np.ndarray,
    target_shape_zyx: Sequence[int],
    order: int,
    outside: float | None = 0.0,
) -> np.ndarray:
    """Resample an array onto another grid.

    Args:
        array_zyx: Values ``[Z, Y, X]`` on the grid ``affine``.
        affine: Affine of the array's grid.
        target_affine: Affine of the target grid.
        target_shape_zyx: Shape of the target grid.
        order: ``0`` nearest neighbour (labels), ``1`` trilinear (images).
        outside: Value of target voxels whose nearest source voxel is outside the array;
            ``None`` extends the array's border values instead.

    Returns:
        ``[*target_shape_zyx]`` with the array's dtype.
    """
    matrix = grid_map(target_affine, affine)  # target index -> source index
    linear, offset = matrix[:3, :3], matrix[:3, 3]
    if np.allclose(linear, np.diag(np.diag(linear)), rtol=0, atol=1e-9):
        linear = np.diag(linear)  # axis-aligned: scipy's faster separable path
    return ndimage.affine_transform(
        array_zyx,
        linear,
        offset=offset,
        output_shape=tuple(int(s) for s in target_shape_zyx),
        order=order,
        mode="nearest" if outside is None else "grid-constant",
        cval=0.0 if outside is None else outside,
        prefilter=False,
    )


def resample_nearest(
    array_zyx: np.ndarray,
    affine: np.ndarray,
    target_affine: np.ndarray,
    target_shape_zyx: Sequence[int],
) -> np.ndarray:
    """Nearest-neighbour resampling of a label array onto another grid.

    Pastes a prediction made on a resampled grid back onto the source image's grid: each target
    voxel takes the value of the source voxel whose centre is nearest; target voxels outside the
    source grid get 0.

    Args:
        array_zyx: Labels ``[Z, Y, X]`` on the grid ``affine``.
        affine: Affine of the array's grid.
        target_affine: Affine of the target grid.
        target_shape_zyx: Shape of the target grid.

    Returns:
        ``[*target_shape_zyx]`` with the array's dtype.
    """
    return resample(array_zyx, affine, target_affine, target_shape_zyx, order=0, outside=0.0)


def to_canonical(array_zyx: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reorient an array to the closest canonical (RAS+) orientation, without interpolation.

    Only axis permutations and flips are applied (as nibabel's ``as_closest_canonical``), so
    the values are moved, never mixed; an oblique remainder stays in the returned affine.

    Args:
        array_zyx: Values ``[Z, Y, X]``.
        affine: Its affine.

    Returns:
        The reoriented array ``[Z', Y', X']`` (contiguous) and its affine.
    """
    affine = np.asarray(affine, dtype=np.float64)
    ornt = orientations.io_orientation(affine)
    xyz = array_zyx.transpose(2, 1, 0)
    new_affine = affine @ orientations.inv_ornt_aff(ornt, xyz.shape)
    moved = orientations.apply_orientation(xyz, ornt)
    return np.ascontiguousarray(moved.transpose(2, 1, 0)), new_affine


def isotropic_grid(
    affine: np.ndarray, shape_zyx: Sequence[int], spacing: float
) -> tuple[np.ndarray, tuple[int, int, int]]:
    """A grid of ``spacing`` mm cubes covering the same field of view as a given grid.

    The axes keep their directions; each gets ``round(n * old_spacing / spacing)`` voxels (at
    least one), and the new grid is centred on the old one.

    Args:
        affine: Affine of the given grid.
        shape_zyx: Its shape.
        spacing: Voxel side of the new grid in mm.

    Returns:
        The new grid's affine and shape ``(Z, Y, X)``.
    """
    old = voxel_size(affine)
    shape = np.asarray(shape_zyx, dtype=np.float64)
    new_shape = np.maximum(1, np.rint(shape * old / spacing))
    ratio = spacing / old  # old voxels per new voxel, (z, y, x)
    start = (shape - 1) / 2 - ratio * (new_shape - 1) / 2  # new voxel 0 in old indices
    step = np.eye(4)
    step[:3, :3] = np.diag(ratio[::-1])
    step[:3, 3] = start[::-1]  # (x, y, z) order of the affine
    new_affine = np.asarray(affine, dtype=np.float64) @ step
    return new_affine, (int(new_shape[0]), int(new_shape[1]), int(new_shape[2]))
