"""Sequential reference of SegVol's 3D Felzenszwalb variant, for timing and agreement checks.

A re-implementation (not a copy) of the logic of ``data_process/felzenszwalb.py`` in
BAAI-DCAI/SegVol @5768c97, kept as slow as the original on purpose: one Python loop over every
edge sorted by cost, with a union-find whose root is always the smallest voxel index of its set.

1. Gaussian smoothing (``scipy.ndimage.gaussian_filter``, ``sigma``).
2. Edges to the forward neighbours along axis 1, axis 0, the two diagonals of the (0, 1) plane
   and axis 2, weighted by the absolute intensity difference.
3. First pass: join the two sets of every edge cheaper than the ``percentile``-th percentile of
   the non-zero costs (the Felzenszwalb predicate is commented out in the original, and its
   ``scale`` is never used).
4. Second pass over the same sorted edges: join when either set has fewer than ``min_size``
   voxels.
5. Labels numbered by the first voxel (C order) of each set.

The one deliberate difference: edges are sorted with a *stable* sort, so equal costs keep the
order above (the original's default quicksort leaves their order to the implementation).
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter


def _forward_pairs(shape: tuple[int, int, int]) -> tuple[list[tuple], list[tuple]]:
    """Slices of the two ends of each of the five edge directions, in the original's order."""
    a, b = slice(1, None), slice(None, -1)
    full = slice(None)
    heads = [(full, a, full), (a, full, full), (a, a, full), (a, b, full), (full, full, a)]
    tails = [(full, b, full), (b, full, full), (b, b, full), (b, a, full), (full, full, b)]
    return heads, tails


def felzenszwalb_reference(
    image: np.ndarray, sigma: float = 0.8, min_size: int = 1000, percentile: float = 25.0
) -> np.ndarray:
    """Segment a 3D volume sequentially, as the original does (slow: minutes at 256x256x32).

    Args:
        image: ``[D0, D1, D2]`` intensities.
        sigma: Gaussian smoothing in voxels.
        min_size: Sets smaller than this are joined to a neighbour in the second pass.
        percentile: Edges cheaper than this percentile of the non-zero costs are joined.

    Returns:
        int64 labels of the same shape, numbered ``0..K-1`` by first voxel.
    """
    smooth = gaussian_filter(image, sigma=sigma)
    index = np.arange(smooth.size).reshape(smooth.shape)
    heads, tails = _forward_pairs(smooth.shape)
    costs = np.concatenate(
        [np.abs(smooth[h] - smooth[t]).ravel() for h, t in zip(heads, tails, strict=True)]
    )
    costs = costs.astype(np.float64)
    ends = np.stack(
        [
            np.concatenate([index[h].ravel() for h in heads]),
            np.concatenate([index[t].ravel() for t in tails]),
        ],
        axis=1,
    )
    order = np.argsort(costs, kind="stable")
    costs, ends = costs[order], ends[order]
    nonzero = costs[costs != 0]
    threshold = np.percentile(nonzero, percentile) if nonzero.size else np.inf

    parent = np.arange(smooth.size)
    size = np.ones(smooth.size, dtype=np.int64)

    def root_of(p: int) -> int:
        while parent[p] != p:
            p = parent[p]
        return p

    def attach(p: int, root: int) -> None:
        while parent[p] != p:
            up = parent[p]
            parent[p] = root
            p = up
        parent[p] = root

    def union(r0: int, r1: int) -> None:
        root = min(r0, r1)
        attach(r0, root)
        attach(r1, root)
        size[root] = size[r0] + size[r1]

    for e in range(costs.size):
        r0, r1 = root_of(ends[e, 0]), root_of(ends[e, 1])
        if r0 != r1 and costs[e] < threshold:
            union(r0, r1)
    for e in range(costs.size):
        r0, r1 = root_of(ends[e, 0]), root_of(ends[e, 1])
        if r0 != r1 and (size[r0] < min_size or size[r1] < min_size):
            union(r0, r1)

    roots = np.array([root_of(p) for p in range(smooth.size)])
    return np.unique(roots, return_inverse=True)[1].reshape(smooth.shape).astype(np.int64)
