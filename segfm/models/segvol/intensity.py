"""SegVol's input intensities: each volume in [0, 1], as its training and inference saw them.

SegVol's data preparation clips a CT to the 0.05 / 99.95 percentiles of its foreground (voxels
above the mean) and z-scores it; its loaders then min-max scale each volume to [0, 1]. A z-score
is an increasing affine map, so min-max after it equals min-max after the clip alone: that is
what ``foreground`` computes, on the device, from any raw intensities (the CVPR 2025 npz files'
0-255, Hounsfield units, MR values).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

#: ``foreground``: clip + min-max of raw intensities; ``minmax``: min-max only; ``none``: as given
Normalization = Literal["foreground", "minmax", "none"]
CLIP_PERCENTILES = (0.05, 99.95)


def _percentile(values: Tensor, q: float) -> Tensor:
    """``np.percentile(values, q)`` (linear interpolation) of a 1D tensor of any length.

    ``torch.quantile`` refuses inputs over 2^24 elements (a 512 x 512 x 64 CT); two order
    statistics from ``kthvalue`` have no such limit.
    """
    position = q / 100 * (values.numel() - 1)
    below = int(position)
    low = values.kthvalue(below + 1).values
    if below + 1 >= values.numel():
        return low
    high = values.kthvalue(below + 2).values
    return low + (position - below) * (high - low)


def _min_max(image: Tensor) -> Tensor:
    """``image [N, *S]`` shifted to 0 and divided by its maximum (at least 1e-8), per volume."""
    flat = image.flatten(1)
    low = flat.min(1).values.view(-1, *[1] * (image.ndim - 1))
    span = (flat.max(1).values.view_as(low) - low).clamp(min=1e-8)
    return (image - low) / span


def foreground_clip(volume: Tensor) -> Tensor:
    """One volume clipped to the :data:`CLIP_PERCENTILES` of its voxels above its mean.

    A constant volume is returned as it is (it has no foreground).
    """
    values = volume.flatten().double()
    foreground = values[values > values.mean()]
    if foreground.numel() == 0:
        return volume
    low, high = (_percentile(foreground, q) for q in CLIP_PERCENTILES)
    return volume.clamp(float(low), float(high))


def normalize_intensity(image: Tensor, mode: Normalization) -> Tensor:
    """Bring volumes ``[N, C, *S]`` to SegVol's input scale.

    Args:
        image: Intensities, one volume per row.
        mode: ``foreground`` for raw intensities (SegVol's clip, then min-max to [0, 1]);
            ``minmax`` for intensities that only need scaling; ``none`` for volumes that are
            already SegVol's input (``M3DSegDataModule``'s samples).

    Returns:
        float32, same shape.
    """
    image = image.float()
    if mode == "none":
        return image
    if mode == "foreground":
        image = torch.stack([foreground_clip(v) for v in image])
    return _min_max(image)
