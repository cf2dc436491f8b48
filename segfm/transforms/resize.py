"""Resizing slices as OpenCV and torch do: nearest by either's index rule, bicubic, quantised.

The 2.5D encoding (:mod:`segfm.transforms.encoding25d`) and BiomedParse's slice augmentation
resize with these, so that their results match the original's cv2 and torch calls.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

NearestRule = Literal["cv2", "torch"]


def nearest_indices(n_in: int, n_out: int, rule: NearestRule = "cv2") -> np.ndarray:
    """Source index of every output pixel of a nearest resize from ``n_in`` to ``n_out``.

    Args:
        n_in: Input length.
        n_out: Output length.
        rule: ``cv2`` (``cv2.resize(..., INTER_NEAREST)``: ``floor(x * (1 / (out / in)))`` in
            float64) or ``torch`` (``F.interpolate(..., mode="nearest")``: ``floor(x * (in /
            out))`` in float32). Both clip to ``n_in - 1``.

    Returns:
        int64 ``[n_out]``.
    """
    x = np.arange(n_out)
    if rule == "cv2":
        index = np.floor(x * (1.0 / (n_out / n_in)))
    elif rule == "torch":
        scale = np.float32(n_in) / np.float32(n_out)
        index = np.floor(x.astype(np.float32) * scale)
    else:
        msg = f"unknown nearest rule {rule!r}; use 'cv2' or 'torch'"
        raise ValueError(msg)
    return np.minimum(index.astype(np.int64), n_in - 1)


def resize(
    x: Tensor,
    size: int | tuple[int, int],
    mode: Literal["bicubic", "nearest"],
    rule: NearestRule = "cv2",
) -> Tensor:
    """Resize the last two axes as the original does.

    Args:
        x: ``[..., h, w]``.
        size: Output side, or ``(rows, columns)``.
        mode: ``bicubic`` (float32 result, neither rounded nor clipped; see :func:`quantize`) or
            ``nearest`` (same dtype, values copied, see :func:`nearest_indices`).
        rule: Index rule of ``nearest``.

    Returns:
        ``[..., *size]``.
    """
    rows, cols = (size, size) if isinstance(size, int) else size
    if mode == "nearest":
        r = torch.from_numpy(nearest_indices(x.shape[-2], rows, rule)).to(x.device)
        c = torch.from_numpy(nearest_indices(x.shape[-1], cols, rule)).to(x.device)
        return x[..., r[:, None], c[None, :]]
    if mode != "bicubic":
        msg = f"unknown resize mode {mode!r}; use 'bicubic' or 'nearest'"
        raise ValueError(msg)
    lead = x.shape[:-2]
    flat = x.reshape(-1, 1, *x.shape[-2:]).float()
    out = F.interpolate(flat, size=(rows, cols), mode="bicubic", align_corners=False)
    return out.reshape(*lead, rows, cols)


def quantize(x: Tensor, rounding: Literal["round", "truncate"]) -> Tensor:
    """Integer grey values of a bicubic result, as float32.

    Args:
        x: Resized intensities.
        rounding: ``round`` (cv2 on uint8: to nearest, clipped to 0-255) or ``truncate``
            (``.int()`` of the inference path: towards zero, not clipped).

    Returns:
        Same shape, integer-valued float32.
    """
    if rounding == "round":
        return x.round().clamp_(0, 255)
    return x.trunc()
