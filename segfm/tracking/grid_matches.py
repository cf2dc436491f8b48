"""Cycle-consistent embedding matches on a grid of fixed-image points (inside the body)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from segfm.tracking.matching import MatchSpace, match_nodes


@dataclass(frozen=True)
class GridMatches:
    """Correspondences between two image grids.

    Attributes:
        fixed: ``[N, 3]`` image-grid coordinates ``(z, y, x)`` in the fixed volume.
        moving: ``[N, 3]`` matched image-grid coordinates in the moving volume.
        scores: ``[N]`` averaged similarities of the forward matches.
        candidates: Grid points tried (before the score and cycle tests).
    """

    fixed: np.ndarray
    moving: np.ndarray
    scores: np.ndarray
    candidates: int


def grid_matches(
    fixed: MatchSpace,
    moving: MatchSpace,
    step: Sequence[int] = (4, 4, 4),
    mask: np.ndarray | None = None,
    threshold: float = 0.5,
    cycle: int = 1,
) -> GridMatches:
    """Match every ``step``-th fine node of ``fixed`` into ``moving`` and keep reliable ones.

    A match is kept when its averaged similarity is ``> threshold`` (in ``[-1, 1]``; the
    original's 1.5 was unreachable) and matching it back lands within ``cycle`` fine nodes
    (Chebyshev) of where it started (cycle consistency, as SAME's affine stage).

    Args:
        fixed: Matching space of the fixed volume.
        moving: Matching space of the moving volume.
        step: ``(z, y, x)`` spacing of the grid in fine nodes (the original: 8, 12, 12).
        mask: ``[D, H, W]`` boolean body mask on the fixed image grid; grid nodes whose centre
            lies outside it are skipped.
        threshold: Smallest averaged similarity of a kept match.
        cycle: Largest back-and-forth drift, in fine nodes.

    Returns:
        The kept matches (image-grid coordinates, sub-voxel refined in the moving volume).
    """
    axes = [np.arange(s // 2, n, s) for n, s in zip(fixed.grid, step, strict=True)]
    nodes = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    if mask is not None:
        centres = np.rint(fixed.centre_of(nodes)).astype(int)
        centres = np.minimum(centres, np.asarray(mask.shape) - 1)
        nodes = nodes[mask[centres[:, 0], centres[:, 1], centres[:, 2]]]
    if len(nodes) == 0:
        empty = np.zeros((0, 3))
        return GridMatches(empty, empty, np.zeros(0), 0)
    forward = match_nodes(fixed, moving, nodes)
    back = match_nodes(moving, fixed, forward.nodes, refine=False)
    drift = np.abs(back.nodes - nodes).max(axis=1)
    keep = (forward.scores > threshold) & (drift <= cycle)
    return GridMatches(
        fixed.centre_of(nodes[keep]), forward.points[keep], forward.scores[keep], len(nodes)
    )
