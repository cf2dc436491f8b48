"""Array operations of the 3D volume pipeline: intensities, crops, z-scores, flips.

All act on numpy arrays ``[Z, Y, X]`` (or ``[C, Z, Y, X]`` where said) and know nothing of files;
:mod:`segfm.data.volume_cache` and :mod:`segfm.data.volume_datasets` chain them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

#: SAM-Med3D's CT rule: Hounsfield units clamped to this range
CT_RANGE = (-1000.0, 1000.0)


def window(
    image: np.ndarray, value_range: tuple[float, float] | None, rescale: bool
) -> tuple[np.ndarray, float]:
    """Clamp intensities to a range, then optionally map it linearly to ``[0, 1]``.

    Args:
        image: float32 values.
        value_range: ``(low, high)`` to clamp to; ``None`` keeps the values.
        rescale: Map ``value_range`` (or, without one, the image's min and max) to ``[0, 1]``.

    Returns:
        The new float32 image and the padding value of its crops: the range's low bound (after
        rescaling) when clamped, else the image's minimum.
    """
    out = image.astype(np.float32, copy=True)
    if value_range is not None:
        np.clip(out, value_range[0], value_range[1], out=out)
        low, high = value_range
    else:
        low, high = (float(out.min()), float(out.max())) if out.size else (0.0, 1.0)
    if rescale:
        out -= low
        out /= max(high - low, 1e-8)
        low = 0.0
    return out, float(low)


def crop_box(
    centre: Sequence[float], size: Sequence[int], jitter: Sequence[int] = (0, 0, 0)
) -> tuple[tuple[int, int], ...]:
    """The box of ``size`` voxels whose centre is nearest ``centre``, shifted by ``jitter``.

    The middle of a box ``(start, stop)`` is ``start + (size - 1) / 2``; on a tie (an even side
    around a whole voxel) the box starts half a voxel later.

    Args:
        centre: Voxel coordinate per axis (e.g. the middle of a bounding box, may be ``.5``).
        size: Box side per axis.
        jitter: Integer shift per axis.

    Returns:
        ``(start, stop)`` per axis; may reach outside the array (padded by :func:`crop_or_pad`).
    """
    box = []
    for c, s, j in zip(centre, size, jitter, strict=True):
        start = int(np.floor(c - (s - 1) / 2 + 0.5)) + int(j)
        box.append((start, start + int(s)))
    return tuple(box)


def crop_or_pad(
    array: np.ndarray, box: Sequence[tuple[int, int]], pad_value: float = 0
) -> np.ndarray:
    """Cut a box out of the last ``len(box)`` axes, padding where it leaves the array.

    Reads only the part inside the array, so ``array`` may be a memory map.

    Args:
        array: ``[..., *S]``.
        box: ``(start, stop)`` per spatial axis.
        pad_value: Value outside the array.

    Returns:
        A new array ``[..., *sizes]`` with the dtype of ``array``.
    """
    lead = array.ndim - len(box)
    shape = array.shape[:lead] + tuple(stop - start for start, stop in box)
    out = np.full(shape, pad_value, dtype=array.dtype)
    src, dst = [slice(None)] * lead, [slice(None)] * lead
    for (start, stop), n in zip(box, array.shape[lead:], strict=True):
        lo, hi = max(start, 0), min(stop, n)
        if lo >= hi:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - start, hi - start))
    out[tuple(dst)] = array[tuple(src)]
    return out


def zscore_foreground(image: np.ndarray) -> np.ndarray:
    """Z-score an image with the mean and std of its voxels > 0 (SAM-Med3D's ZNormalization).

    Args:
        image: float values; all voxels are normalised, the statistics come from those > 0.

    Returns:
        A new float32 array; the image unchanged (as float32) if no voxel is > 0, and only
        centred if those voxels are constant.
    """
    out = image.astype(np.float32, copy=True)
    mask = out > 0
    if not mask.any():
        return out
    values = out[mask].astype(np.float64)
    mean, std = values.mean(), values.std()
    out -= np.float32(mean)
    if std > 0:
        out /= np.float32(std)
    return out


def random_flips(
    arrays: Sequence[np.ndarray], p: float = 0.5, generator: torch.Generator | None = None
) -> list[np.ndarray]:
    """Flip arrays together along each of their last three axes with probability ``p``.

    Randomness comes from torch (seeded per loader worker), not numpy's global state.

    Args:
        arrays: Arrays ``[..., Z, Y, X]`` that share the spatial grid (image and label).
        p: Flip probability per axis.
        generator: Random generator; torch's default one if ``None``.

    Returns:
        The flipped (contiguous) arrays.
    """
    flips = (torch.rand(3, generator=generator) < p).tolist()
    axes = tuple(-3 + i for i, flip in enumerate(flips) if flip)
    if not axes:
        return list(arrays)
    return [np.ascontiguousarray(np.flip(a, axis=axes)) for a in arrays]
