"""Fixed-size windows over a region of a volume: where to put them, how to crop and paste them.

3D SAM networks see a cube of ``size`` voxels (128³ for SAM-Med3D). A target that fits is
segmented in one cube centred on it; a larger one in overlapping cubes that together cover it
(the sliding window of SAM-Med3D's issues #29 / #124, done over the target region only).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

Box = tuple[tuple[int, ...], tuple[int, ...]]  # (low corner, high corner), high exclusive


def _axis_starts(lo: int, hi: int, size: int, overlap: float) -> list[int]:
    """Window starts along one axis so that windows of ``size`` cover ``[lo, hi)``."""
    extent = hi - lo
    if extent <= size:
        return [lo + extent // 2 - size // 2]
    stride = max(1, int(size * (1 - overlap)))
    count = math.ceil((extent - size) / stride) + 1
    last = hi - size
    return [round(lo + i * (last - lo) / (count - 1)) for i in range(count)]


def region_windows(
    lo: Sequence[int], hi: Sequence[int], size: int, overlap: float = 0.25
) -> list[tuple[int, ...]]:
    """Start corners of cubes of side ``size`` covering the box ``[lo, hi)``.

    Along an axis where the box fits, one window is centred on it; elsewhere windows are spread
    evenly from ``lo`` to ``hi - size`` with at least ``overlap`` of their side shared. Windows
    may reach outside the volume (they are padded when cropped).

    Args:
        lo: Low corner of the region (inclusive), one index per axis.
        hi: High corner (exclusive).
        size: Window side.
        overlap: Least shared fraction of neighbouring windows, in ``[0, 1)``.

    Returns:
        The start corners, in C order over the axes.
    """
    if not 0 <= overlap < 1:
        msg = f"overlap must be in [0, 1), got {overlap}"
        raise ValueError(msg)
    if any(h <= low for low, h in zip(lo, hi, strict=True)):
        msg = f"empty region [{tuple(lo)}, {tuple(hi)})"
        raise ValueError(msg)
    axes = [_axis_starts(low, h, size, overlap) for low, h in zip(lo, hi, strict=True)]
    return list(itertools.product(*axes))


def windows_box(starts: Sequence[Sequence[int]], size: int, shape: Sequence[int]) -> Box:
    """The part of a volume of ``shape`` that windows at ``starts`` cover, as one box."""
    lo = tuple(max(0, min(s[a] for s in starts)) for a in range(len(shape)))
    hi = tuple(min(n, max(s[a] for s in starts) + size) for a, n in enumerate(shape))
    return lo, hi


def crop_padded(volume: Tensor, start: Sequence[int], size: int, value: float = 0.0) -> Tensor:
    """A cube of side ``size`` at ``start`` of the last ``len(start)`` axes, padded outside.

    Args:
        volume: ``[..., *S]``.
        start: Window corner; may be negative or reach past the end.
        size: Window side.
        value: Fill value outside the volume.

    Returns:
        ``[..., size, ...]``.
    """
    shape = volume.shape[-len(start) :]
    index: list[slice] = []
    pad: list[int] = []
    for s, n in zip(start, shape, strict=True):
        a, b = min(max(0, s), n), max(0, min(n, s + size))
        b = max(a, b)  # a window wholly outside keeps nothing
        before = min(size, max(0, -s))
        index.append(slice(a, b))
        pad = [before, size - before - (b - a), *pad]  # F.pad wants the last axis first
    patch = volume[(..., *index)]
    if any(pad):
        patch = F.pad(patch, pad, value=value)
    return patch


def paste_add(canvas: Tensor, patch: Tensor, start: Sequence[int]) -> None:
    """Add ``patch`` (a window at ``start``) into ``canvas`` where they overlap, in place."""
    dst: list[slice] = []
    src: list[slice] = []
    for s, n, p in zip(start, canvas.shape[-len(start) :], patch.shape[-len(start) :], strict=True):
        a, b = max(0, s), min(n, s + p)
        if b <= a:
            return
        dst.append(slice(a, b))
        src.append(slice(a - s, b - s))
    canvas[(..., *dst)] += patch[(..., *src)]


def inside(points: Tensor, start: Sequence[int], size: int) -> Tensor:
    """Which of ``points [P, n]`` (voxel indices) lie in the window at ``start``: ``[P]`` bool."""
    lo = torch.as_tensor(start, device=points.device)
    return ((points >= lo) & (points < lo + size)).all(dim=-1)
