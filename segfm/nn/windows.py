"""Non-overlapping window partition of channels-last token grids, for any number of axes."""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor


def window_partition(x: Tensor, window_size: int) -> tuple[Tensor, tuple[int, ...]]:
    """Split a token grid into cubic windows, zero-padding each axis to a multiple of the window.

    Padded tokens are plain zeros and take part in attention like the others, as in SAM's
    ``window_partition`` (so an 8³ SAM-Med3D grid with window 14 becomes one 14³ window).

    Args:
        x: Tokens ``[B, *S, C]``.
        window_size: Window side length ``w``.

    Returns:
        Windows ``[B * num_windows, w, ..., w, C]`` and the padded grid size ``S'``.
    """
    b, *size, c = x.shape
    pads = [(-s) % window_size for s in size]
    if any(pads):
        # F.pad takes (last axis first) pairs: none for C, then the spatial axes in reverse.
        pad_arg = [0, 0]
        for p in reversed(pads):
            pad_arg += [0, p]
        x = F.pad(x, pad_arg)
    padded = tuple(s + p for s, p in zip(size, pads, strict=True))
    n = len(size)
    # [B, S'1/w, w, S'2/w, w, ..., C] -> [B, S'1/w, S'2/w, ..., w, w, ..., C]
    split = [b]
    for s in padded:
        split += [s // window_size, window_size]
    perm = [0, *range(1, 2 * n, 2), *range(2, 2 * n + 1, 2), 2 * n + 1]
    windows = x.reshape(*split, c).permute(perm).reshape(-1, *(window_size,) * n, c)
    return windows, padded


def window_unpartition(
    windows: Tensor, window_size: int, padded: tuple[int, ...], size: tuple[int, ...]
) -> Tensor:
    """Reassemble windows into the token grid and drop the padding (inverse of the partition).

    Args:
        windows: Windows ``[B * num_windows, w, ..., w, C]``.
        window_size: Window side length ``w``.
        padded: Padded grid size ``S'`` returned by :func:`window_partition`.
        size: Grid size ``S`` before padding.

    Returns:
        Tokens ``[B, *S, C]``.
    """
    n = len(size)
    grid = [p // window_size for p in padded]
    b = windows.shape[0] // math.prod(grid)
    c = windows.shape[-1]
    # [B, S'1/w, S'2/w, ..., w, w, ..., C] -> [B, S'1/w, w, S'2/w, w, ..., C]
    perm = [0]
    for i in range(n):
        perm += [1 + i, 1 + n + i]
    perm.append(2 * n + 1)
    x = windows.reshape(b, *grid, *(window_size,) * n, c).permute(perm).reshape(b, *padded, c)
    if tuple(padded) != tuple(size):
        x = x[(slice(None), *(slice(0, s) for s in size))].contiguous()
    return x
