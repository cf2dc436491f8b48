"""Point matching with anatomical embeddings: nearest neighbour and fixed-point matching.

All points are image-grid indices ``(z, y, x)`` of the grids stored in the embedding files
(:mod:`segfm.data.io.embeddings_h5`); :class:`~segfm.data.io.embeddings_h5.EmbeddingVolume`
converts them to and from world millimetres.

Similarity, as the original (``tools/interfaces.py``): the coarse embeddings are upsampled to the
fine grid (trilinear, ``align_corners=False``) and renormalised; the score of a target voxel is
the mean of the cosine similarities of each embedding kind, ``(fine + coarse) / 2`` or, with
the SAM++ semantic embeddings, ``(fine + coarse + semantic) / 3``. It lies in ``[-1, 1]``.

Sub-voxel handling: the query is read at the fine node whose cell holds the query point
(``floor((p + 0.5) / stride)``); the best fine node of the target is found first, then the score
map is upsampled trilinearly (``align_corners=False``, as the original upsamples it to the image)
at the image voxels around that node, and the best image voxel is returned. This is the
original's argmax of the fully upsampled map, computed without materialising it (the two differ
only when another far-away node ties with the best one).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from segfm.data.io.embeddings_h5 import EmbeddingVolume
from segfm.tracking.robust import huber_irls

#: queries per block of the similarity product (bounds memory to block x target voxels)
_BLOCK = 64


def upsample_linear(array: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Trilinear resize of ``[C, *S]`` to ``[C, *size]`` as ``F.interpolate(align_corners=False)``.

    Args:
        array: ``[C, d, h, w]`` values.
        size: Output spatial size ``(D, H, W)``.

    Returns:
        float32 ``[C, *size]``.
    """
    out = np.asarray(array, dtype=np.float32)
    for axis, n_out in enumerate(size, start=1):
        n_in = out.shape[axis]
        if n_in == n_out:
            continue
        src = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
        src = np.clip(src, 0, n_in - 1)
        lo = np.floor(src).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        w = (src - lo).astype(np.float32)
        shape = [1] * out.ndim
        shape[axis] = n_out
        w = w.reshape(shape)
        out = np.take(out, lo, axis=axis) * (1 - w) + np.take(out, hi, axis=axis) * w
    return out


def _normalise(array: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(array, axis=0, keepdims=True)
    return array / np.maximum(norm, 1e-12)


@dataclass(frozen=True)
class MatchSpace:
    """The embeddings of one volume on its fine grid, ready for matching.

    Attributes:
        features: ``[C_k, d, h, w]`` float32 L2-normalised embeddings, one per kind averaged in
            the score (fine, coarse upsampled to the fine grid, and semantic if used).
        stride: ``(z, y, x)`` stride of the fine grid on the image grid.
        image_shape: ``(D, H, W)`` of the image grid.
    """

    features: tuple[np.ndarray, ...]
    stride: tuple[int, int, int]
    image_shape: tuple[int, int, int]

    @property
    def grid(self) -> tuple[int, int, int]:
        """Shape ``(d, h, w)`` of the fine grid."""
        return tuple(self.features[0].shape[1:])

    def node_of(self, points_zyx: np.ndarray) -> np.ndarray:
        """``[N, 3]`` int fine nodes whose cells hold the image-grid points ``[N, 3]``."""
        p = np.asarray(points_zyx, dtype=np.float64).reshape(-1, 3)
        node = np.floor((p + 0.5) / np.asarray(self.stride)).astype(int)
        return np.clip(node, 0, np.asarray(self.grid) - 1)

    def centre_of(self, nodes: np.ndarray) -> np.ndarray:
        """``[N, 3]`` image-grid coordinates of the centres of fine nodes."""
        s = np.asarray(self.stride, dtype=np.float64)
        return np.asarray(nodes, dtype=np.float64).reshape(-1, 3) * s + (s - 1) / 2


def match_space(volume: EmbeddingVolume, use_semantic: bool | None = None) -> MatchSpace:
    """Prepare a volume's embeddings for matching.

    Args:
        volume: The embeddings read from an HDF5 file.
        use_semantic: Include the SAM++ semantic embeddings; None uses them when present.

    Returns:
        The matching space.

    Raises:
        ValueError: If ``use_semantic`` is True but the volume has none.
    """
    if use_semantic and volume.semantic is None:
        msg = f"use_semantic=True but {volume.case_id} has no semantic embeddings"
        raise ValueError(msg)
    fine = _normalise(np.asarray(volume.fine, dtype=np.float32))
    grid = fine.shape[1:]
    feats = [fine, _normalise(upsample_linear(volume.coarse, grid))]
    if volume.semantic is not None and use_semantic is not False:
        feats.append(_normalise(np.asarray(volume.semantic, dtype=np.float32)))
    return MatchSpace(tuple(feats), volume.strides["fine"], volume.image_shape)


@dataclass(frozen=True)
class Matches:
    """Matches of query nodes into a target.

    Attributes:
        nodes: ``[N, 3]`` int best fine nodes of the target.
        points: ``[N, 3]`` float image-grid voxels of the target (sub-voxel refined argmax).
        scores: ``[N]`` mean cosine similarity at the best node, in ``[-1, 1]``.
    """

    nodes: np.ndarray
    points: np.ndarray
    scores: np.ndarray


def _refine(sim: np.ndarray, node: np.ndarray, space: MatchSpace) -> np.ndarray:
    """Best image voxel of the upsampled score map near ``node`` (see the module docstring)."""
    axes = []
    for n_img, n_fine, c in zip(space.image_shape, space.grid, node, strict=True):
        scale = n_fine / n_img
        lo = max(0, int(np.floor((c - 1 + 0.5) / scale - 0.5)))
        hi = min(n_img - 1, int(np.ceil((c + 1 + 0.5) / scale - 0.5)))
        axes.append(np.arange(lo, hi + 1))
    zz, yy, xx = np.meshgrid(*axes, indexing="ij")
    voxels = np.stack([zz.ravel(), yy.ravel(), xx.ravel()], axis=1)
    scale = np.asarray(space.grid) / np.asarray(space.image_shape)
    coords = np.clip((voxels + 0.5) * scale - 0.5, 0, np.asarray(space.grid) - 1)
    values = ndimage.map_coordinates(sim, coords.T, order=1, mode="nearest", prefilter=False)
    return voxels[int(np.argmax(values))].astype(np.float64)


def match_nodes(
    query: MatchSpace, key: MatchSpace, nodes: np.ndarray, refine: bool = True
) -> Matches:
    """Nearest-neighbour match of fine nodes of ``query`` into ``key``.

    Args:
        query: Matching space of the query volume.
        key: Matching space of the key (target) volume.
        nodes: ``[N, 3]`` int fine nodes of the query.
        refine: Refine each match to an image voxel; without it ``points`` are node centres.

    Returns:
        The matches.

    Raises:
        ValueError: If the two spaces hold different numbers of embedding kinds or channels.
    """
    channels_q = [f.shape[0] for f in query.features]
    channels_k = [f.shape[0] for f in key.features]
    if channels_q != channels_k:
        msg = (
            f"query embeddings (channels {channels_q}) and key embeddings (channels "
            f"{channels_k}) differ; embed both with one model and the same use_semantic"
        )
        raise ValueError(msg)
    nodes = np.asarray(nodes, dtype=int).reshape(-1, 3)
    kinds = len(key.features)
    flat_key = [f.reshape(f.shape[0], -1) for f in key.features]  # [C, M] each
    q = [f[:, nodes[:, 0], nodes[:, 1], nodes[:, 2]] for f in query.features]  # [C, N] each
    out_nodes = np.zeros_like(nodes)
    points = np.zeros((len(nodes), 3))
    scores = np.zeros(len(nodes))
    for start in range(0, len(nodes), _BLOCK):
        block = slice(start, start + _BLOCK)
        sim = sum(a[:, block].T @ b for a, b in zip(q, flat_key, strict=True)) / kinds  # [n, M]
        best = np.argmax(sim, axis=1)
        scores[block] = sim[np.arange(len(best)), best]
        out_nodes[block] = np.stack(np.unravel_index(best, key.grid), axis=1)
        for i, row in enumerate(sim):
            node = out_nodes[start + i]
            if refine:
                points[start + i] = _refine(row.reshape(key.grid), node, key)
            else:
                points[start + i] = key.centre_of(node)[0]
    return Matches(out_nodes, points, scores)


def match_points(query: MatchSpace, key: MatchSpace, points_zyx: np.ndarray) -> Matches:
    """Nearest-neighbour match of image-grid points of ``query`` into ``key``.

    Args:
        query: Matching space of the volume the points are on.
        key: Matching space of the target volume.
        points_zyx: ``[N, 3]`` image-grid coordinates ``(z, y, x)`` of the query.

    Returns:
        The matches (``points`` on the key's image grid).
    """
    return match_nodes(query, key, query.node_of(points_zyx))


def local_grid(node: np.ndarray, radius: int, grid: Sequence[int]) -> np.ndarray:
    """The distinct nodes of a ``(2r+1)³`` cube around ``node``, clipped into the grid."""
    offsets = np.arange(-radius, radius + 1)
    cube = np.stack(np.meshgrid(offsets, offsets, offsets, indexing="ij"), -1).reshape(-1, 3)
    nodes = np.clip(np.asarray(node).reshape(1, 3) + cube, 0, np.asarray(grid) - 1)
    return np.unique(nodes, axis=0)


@dataclass(frozen=True)
class FixedPointResult:
    """The outcome of fixed-point matching of one point.

    Attributes:
        point: ``[3]`` predicted image-grid coordinates in the key.
        score: Mean score of the points used (or the nearest-neighbour score on fallback).
        used: Number of grid points that passed the threshold (0: fell back to nearest).
    """

    point: np.ndarray
    score: float
    used: int


def fixed_point_match(
    query: MatchSpace,
    key: MatchSpace,
    point_zyx: Sequence[float],
    spacing_query: Sequence[float],
    radius: int = 2,
    iterations: int = 4,
    threshold: float = 0.8,
    max_distance_mm: float = 200.0,
) -> FixedPointResult:
    """Fixed-point ("stable points") matching of one query point, as the original demo.

    A ``(2r+1)³`` cube of fine nodes around the query is matched forward into the key and back,
    ``iterations`` passes in all (4: forward, back, forward, back). The last forward matches
    ``k_i`` and the points ``q_i`` they lead back to form pairs; those with a last-pass score
    ``> threshold`` and ``q_i`` within ``max_distance_mm`` of the query are kept. A robust
    (Huber IRLS) linear map ``k ≈ A q + b`` is fitted per key axis, each pair predicts
    ``k_i - A (q_i - query)``, and the predictions are averaged and clipped into the image.

    Fix: the original kept scores ``> 1.3`` of a similarity averaged over two or three cosines,
    which never exceeds 1, so no point passed; ``threshold`` is on the averaged similarity in
    ``[-1, 1]`` (0.8, as the fixed demo). When fewer than 4 pairs pass (too few to fit ``A``),
    the nearest-neighbour match of the query is returned with ``used=0``.

    Args:
        query: Matching space of the query volume.
        key: Matching space of the key volume.
        point_zyx: The query point, image-grid coordinates of the query volume.
        spacing_query: ``(z, y, x)`` mm of the query image grid (for ``max_distance_mm``).
        radius: Half-size of the cube of fine nodes (2 gives 5x5x5).
        iterations: Forward/backward passes (even, ≥ 2).
        threshold: Smallest averaged similarity of a kept pair.
        max_distance_mm: Largest distance of ``q_i`` from the query.

    Returns:
        The prediction.

    Raises:
        ValueError: If ``iterations`` is odd or below 2, or ``radius`` is negative.
    """
    if iterations < 2 or iterations % 2:
        msg = f"iterations must be even and >= 2, got {iterations}"
        raise ValueError(msg)
    if radius < 0:
        msg = f"radius must be >= 0, got {radius}"
        raise ValueError(msg)
    origin = np.asarray(point_zyx, dtype=np.float64).reshape(3)
    nodes = local_grid(query.node_of(origin)[0], radius, query.grid)
    forward = backward = None
    for j in range(iterations):
        if j % 2 == 0:
            forward = match_nodes(query, key, nodes)
            nodes = forward.nodes
        else:
            backward = match_nodes(key, query, nodes)
            nodes = backward.nodes
    assert forward is not None and backward is not None
    spacing = np.asarray(spacing_query, dtype=np.float64)
    dist = np.linalg.norm((backward.points - origin) * spacing, axis=1)
    keep = (backward.scores > threshold) & (dist < max_distance_mm)
    if keep.sum() < 4:
        nearest = match_points(query, key, origin[None])
        return FixedPointResult(nearest.points[0], float(nearest.scores[0]), 0)
    q, k = backward.points[keep], forward.points[keep]
    design = np.concatenate([q, np.ones((len(q), 1))], axis=1)
    coef = huber_irls(design, k)  # [4, 3]: k ≈ q @ A.T + b
    linear = coef[:3].T
    predictions = k - (q - origin) @ linear.T
    predictions = np.clip(predictions, 0, np.asarray(key.image_shape) - 1)
    return FixedPointResult(
        predictions.mean(axis=0), float(backward.scores[keep].mean()), int(keep.sum())
    )
