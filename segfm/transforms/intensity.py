"""Intensity normalisations: SegVol's unit range, the CT/MR windows to 0-255.

:func:`unit_range` (tensors, on the device): SegVol's input scale. SegVol's data preparation
clips a CT to the 0.05 / 99.95 percentiles of its foreground (voxels above the mean) and
z-scores it; its loaders then min-max scale each volume to [0, 1]. A z-score is an increasing
affine map, so min-max after it equals min-max after the clip alone: that is what
``foreground`` computes, from any raw intensities (the CVPR 2025 npz files' 0-255, Hounsfield
units, MR values).

:func:`window_ct` / :func:`normalize_mr` (numpy arrays): MedSAM's ``pre_CT_MR.py`` steps to
uint8 (a CT window in HU, MR percentiles), including the original's min-max over the *clipped*
volume and its truncating cast; ``data_tools.pre_ct_mr`` and ``segfm serve`` use them.

:func:`window_ct_mr` (numpy arrays, in the reader): the anatomical embeddings' input scale, the
original's ``RescaleIntensity``: CT clipped to :data:`CT_WINDOW` HU, MR to its
:data:`MR_PERCENTILES`, mapped to [0, 255], minus :data:`WINDOW_BIAS`.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch import Tensor

#: ``foreground``: clip + min-max of raw intensities; ``minmax``: min-max only; ``none``: as given
UnitRange = Literal["foreground", "minmax", "none"]
#: percentiles of the foreground that :func:`foreground_clip` clips to
CLIP_PERCENTILES = (0.05, 99.95)

#: CT windows by name: (level, width) in HU
WINDOWS = {"abdomen": (40.0, 400.0), "chest": (-600.0, 1500.0), "brain": (40.0, 80.0)}

#: ``ct``: HU window; ``mr``: percentile window; ``auto``: by the minimum; ``none``: as given
Window = Literal["ct", "mr", "auto", "none"]
#: Hounsfield units kept of a CT
CT_WINDOW = (-1024.0, 3071.0)
#: percentiles kept of an MR volume
MR_PERCENTILES = (0.2, 99.8)
#: value subtracted after scaling to [0, 255] (the original's bias)
WINDOW_BIAS = 50.0
#: a volume whose minimum is below this is taken for a CT by ``auto``
CT_MINIMUM = -500.0


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


def unit_range(image: Tensor, mode: UnitRange) -> Tensor:
    """Bring volumes ``[N, C, *S]`` to SegVol's input scale, [0, 1] per volume.

    Args:
        image: Intensities, one volume per row.
        mode: ``foreground`` for raw intensities (SegVol's foreground clip, then min-max);
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


def window_ct_mr(image: np.ndarray, kind: Window) -> np.ndarray:
    """A CT window or MR percentile window mapped to [0, 255], minus :data:`WINDOW_BIAS`.

    Args:
        image: Intensities of one volume.
        kind: ``ct`` (:data:`CT_WINDOW`), ``mr`` (:data:`MR_PERCENTILES` of the volume),
            ``auto`` (``ct`` when the minimum is below :data:`CT_MINIMUM`, else ``mr``) or
            ``none`` (returned unchanged).

    Returns:
        float32, same shape.
    """
    x = image.astype(np.float32)
    if kind == "none":
        return x
    if kind == "auto":
        kind = "ct" if float(x.min()) < CT_MINIMUM else "mr"
    if kind == "ct":
        low, high = CT_WINDOW
    else:
        low, high = (float(v) for v in np.percentile(x, MR_PERCENTILES))
    scaled = (np.clip(x, low, high) - low) / max(high - low, 1e-6) * 255.0
    return (scaled - WINDOW_BIAS).astype(np.float32)


def _min_max_uint8(image: np.ndarray, lower: float, upper: float) -> np.ndarray:
    """Clip to ``[lower, upper]``, min-max the clipped values to 0..255 and truncate to uint8."""
    out = np.clip(image.astype(np.float64), lower, upper)
    low, high = out.min(), out.max()
    if high <= low:
        return np.zeros(image.shape, dtype=np.uint8)
    out -= low
    out /= high - low
    out *= 255.0
    return out.astype(np.uint8)


def window_ct(image: np.ndarray, level: float, width: float) -> np.ndarray:
    """Window a CT volume in HU.

    Args:
        image: Volume in HU, any shape.
        level: Window centre in HU.
        width: Window width in HU.

    Returns:
        uint8 volume: clipped to ``[level - width / 2, level + width / 2]``, then min-max scaled
        to 0..255 (over the clipped values, as the original: equal to the window's own bounds
        whenever the volume spans the window, as any CT with air and bone does).

    Raises:
        ValueError: If ``width`` is not positive.
    """
    if width <= 0:
        msg = f"window width must be positive, got {width}"
        raise ValueError(msg)
    return _min_max_uint8(image, level - width / 2, level + width / 2)


def normalize_mr(image: np.ndarray) -> np.ndarray:
    """Normalise an MR volume.

    Args:
        image: Volume, any shape.

    Returns:
        uint8 volume: clipped to the 0.5 and 99.5 percentiles of the voxels > 0, min-max scaled
        to 0..255; voxels that were 0 stay 0.

    Raises:
        ValueError: If no voxel is > 0.
    """
    positive = image[image > 0]
    if positive.size == 0:
        msg = "the volume has no voxel > 0"
        raise ValueError(msg)
    lower, upper = np.percentile(positive, [0.5, 99.5])
    out = _min_max_uint8(image, float(lower), float(upper))
    out[image == 0] = 0
    return out
