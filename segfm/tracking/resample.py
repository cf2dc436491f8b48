"""Resampling a moving image onto a fixed grid through world space.

Grids are given by ``(4, 4)`` affines mapping array indices ``(z, y, x, 1)`` to world mm
(:func:`segfm.data.io.embeddings_h5.nifti_affine` converts a NIfTI affine). A transform maps
*fixed* world points to *moving* world points (the direction a pull-back resampling needs).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

#: output rows resampled at once (bounds the coordinate arrays to a slab)
_SLAB_VOXELS = 2_000_000


@dataclass(frozen=True)
class Displacement:
    """A dense displacement field on a grid, in voxels of that grid.

    Attributes:
        field: ``[3, d, h, w]`` displacement ``(dz, dy, dx)`` in voxels of the grid.
        affine: ``(4, 4)`` ``(z, y, x)``-index to world affine of the grid.
    """

    field: np.ndarray
    affine: np.ndarray

    def apply(self, world: np.ndarray) -> np.ndarray:
        """Move world points ``[N, 3]``: ``p -> A (q + u(q))`` with ``q = A⁻¹ p``."""
        a = self.affine
        q = np.linalg.solve(a[:3, :3], (world - a[:3, 3]).T)  # [3, N]
        u = np.stack([ndimage.map_coordinates(c, q, order=1, mode="nearest") for c in self.field])
        return ((q + u).T @ a[:3, :3].T) + a[:3, 3]


def warp(
    moving: np.ndarray,
    moving_affine: np.ndarray,
    fixed_affine: np.ndarray,
    fixed_shape: Sequence[int],
    transform: np.ndarray | None = None,
    displacement: Displacement | None = None,
    order: int = 1,
    cval: float | None = None,
) -> np.ndarray:
    """Resample ``moving`` onto the fixed grid (one interpolation of the moving image).

    Each fixed voxel ``v`` samples the moving image at ``M⁻¹ T D(F v)``: ``F`` and ``M`` the
    two grid affines, ``D`` the optional displacement (fixed world to fixed world, deformable
    refinement), ``T`` the optional fixed-world-to-moving-world transform.

    Args:
        moving: ``[Z, Y, X]`` moving image.
        moving_affine: Its ``(z, y, x)``-index affine.
        fixed_affine: ``(z, y, x)``-index affine of the output grid.
        fixed_shape: ``(Z, Y, X)`` of the output grid.
        transform: ``(4, 4)`` fixed world -> moving world (identity if None).
        displacement: Deformable displacement applied before ``transform``.
        order: Spline order (0 nearest for labels, 1 linear for images).
        cval: Value outside the moving image (default: its minimum).

    Returns:
        ``[*fixed_shape]`` float32 (``order=0`` keeps the moving dtype).
    """
    moving = np.asarray(moving)
    t = np.eye(4) if transform is None else np.asarray(transform, dtype=np.float64)
    fill = float(moving.min()) if cval is None else float(cval)
    shape = tuple(int(s) for s in fixed_shape)
    out = np.empty(shape, dtype=moving.dtype if order == 0 else np.float32)
    rows = max(1, _SLAB_VOXELS // max(1, shape[1] * shape[2]))
    inv_moving = np.linalg.inv(moving_affine)
    source = moving if order == 0 else moving.astype(np.float32)
    for z0 in range(0, shape[0], rows):
        z1 = min(shape[0], z0 + rows)
        idx = np.stack(np.meshgrid(np.arange(z0, z1), *map(np.arange, shape[1:]), indexing="ij"))
        pts = idx.reshape(3, -1).T.astype(np.float64)
        world = pts @ fixed_affine[:3, :3].T + fixed_affine[:3, 3]
        if displacement is not None:
            world = displacement.apply(world)
        world = world @ t[:3, :3].T + t[:3, 3]
        coords = inv_moving[:3, :3] @ world.T + inv_moving[:3, 3:4]
        values = ndimage.map_coordinates(
            source, coords, order=order, mode="constant", cval=fill, prefilter=False
        )
        out[z0:z1] = values.reshape(z1 - z0, *shape[1:])
    return out
