"""BiomedParse v2's 2.5D encoding of volumes ("fractal volumetric encoding"), in one place.

The released weights expect this input, built by the original in three places that segfm all
serves from here: ``process_2D.py`` (the PNG tool, :mod:`data_tools.process_2d`), its training
loader (segfm's npz data module, 2.5D slices) and 3D inference (``utils.process_input`` +
``BiomedParseModel.forward_eval``, :mod:`segfm.inference.volume25d`). Despite the name there is
no fractal curve: a volume is cut along one axis and every slice becomes an RGB image of itself
and its two neighbours, ``[i, i-1, i+1]``, a missing neighbour mirrored (``i = 0`` uses slice 1
twice, the last slice ``D-2`` twice, a volume of one slice three copies of it). Each slice is
padded to a centred square with zeros and resized to ``size`` (512): bicubic for images,
nearest for labels (:mod:`segfm.transforms.resize`). Resizing acts on each slice alone, so
stacking neighbours before or after it is the same.

The two original paths differ, and :func:`encode_volume` keeps both (``inference``):

=================  ==============================  ===========================================
step               tool + training (default)       inference (``inference=True``)
=================  ==============================  ===========================================
axis               :func:`slice_axis`, plus the    :func:`slice_axis` only (spacing unused)
                   extra views of
                   :func:`multi_view_axes`
padding            ``diff // 2`` on both sides:    ``utils.get_padding``: ``diff // 2`` before,
                   an odd difference stays one     the rest after: always square
                   pixel short of square
image values       ``astype(uint8)`` (floats       raw values, bicubic, then ``.int()``:
                   truncated), cv2 bicubic on      truncated towards zero, not clipped
                   uint8: rounded, clipped 0-255
label values       nearest (cv2's index rule)      (labels are not encoded at inference)
=================  ==============================  ===========================================

Differences from the original, on purpose: labels keep their integer ids (the original casts them
to uint8 first, so instance ids above 255 wrap around); cv2's bicubic is replaced by torch's
(same kernel, a = -0.75, half-pixel centres, edge replication), then rounded half to even and
clipped, which matches cv2's fixed-point uint8 result within one grey level on fewer than 0.01 %
of the pixels (measured against OpenCV 5.0 on random images, 37² to 1024² to 512²). Nearest
resizing reproduces each original's index rule exactly: cv2's (``floor(x / (out / in))`` in
float64) when encoding, torch's (``floor(x * (in / out))`` in float32) in :func:`decode_slices`,
as the original's ``process_output``; the two disagree by one source pixel for some sizes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from segfm.transforms.resize import quantize, resize

Array = TypeVar("Array", np.ndarray, Tensor)
#: zeros added to a slice: ``(top, bottom, left, right)``
Padding = tuple[int, int, int, int]

#: views whose shape ratios are all below this count as near-cubic (and the slice plane as square)
SHAPE_RATIO_LIMIT = 0.5
#: relative spread of the spacing up to which a volume counts as isotropic
SPACING_SPREAD_LIMIT = 0.1


def shape_ratios(shape: Sequence[int]) -> tuple[float, float, float]:
    """Relative differences ``2|a - b| / (a + b)`` of the axis pairs (1, 2), (0, 2), (0, 1).

    Args:
        shape: ``(D, H, W)``.

    Returns:
        The three ratios, in the original's order.
    """
    d, h, w = (int(n) for n in shape)
    return (2 * abs(h - w) / (h + w), 2 * abs(d - w) / (d + w), 2 * abs(d - h) / (d + h))


def slice_axis(shape: Sequence[int]) -> int:
    """The axis a volume is cut along (``get_axis`` of the tool and of ``utils``).

    Axis 0 unless the other two differ by a ratio of 0.5 or more (:func:`shape_ratios`); then the
    shortest axis (the first of equals).

    Args:
        shape: ``(D, H, W)``.

    Returns:
        0, 1 or 2.
    """
    if shape_ratios(shape)[0] < SHAPE_RATIO_LIMIT:
        return 0
    return int(np.argmin(shape))


def multi_view_axes(shape: Sequence[int], spacing: Sequence[float]) -> list[int]:
    """The axes the tool exports (``process_2D.get_axis``).

    All three when the volume is isotropic (``(max - min) / max`` of the spacing at most 0.1)
    and near-cubic (every :func:`shape_ratios` value below 0.5); else ``[slice_axis(shape)]``.

    Args:
        shape: ``(D, H, W)``.
        spacing: Voxel size in the same order.

    Returns:
        The axes, the main one first.
    """
    axes = [slice_axis(shape)]
    low, high = float(min(spacing)), float(max(spacing))
    if (high - low) / high <= SPACING_SPREAD_LIMIT and max(shape_ratios(shape)) < SHAPE_RATIO_LIMIT:
        axes = [0, 1, 2]
    return axes


def neighbour_indices(n: int) -> np.ndarray:
    """Slice indices of the RGB channels of every slice: ``[i, i-1, i+1]``, mirrored at edges.

    Args:
        n: Number of slices (>= 1).

    Returns:
        int64 ``[n, 3]``.
    """
    if n < 1:
        msg = f"a volume needs at least one slice, got n={n}"
        raise ValueError(msg)
    i = np.arange(n)
    if n == 1:
        return np.zeros((1, 3), dtype=np.int64)
    before = np.where(i > 0, i - 1, i + 1)
    after = np.where(i < n - 1, i + 1, i - 1)
    return np.stack([i, before, after], axis=1).astype(np.int64)


def stack_neighbours(volume: Array, axis: int = 0) -> Array:
    """Every slice along ``axis`` with its neighbours as channels.

    Args:
        volume: ``(D, H, W)`` numpy array or tensor.
        axis: The slicing axis.

    Returns:
        ``[N, 3, h, w]`` of the same kind, ``N`` the length of ``axis``.
    """
    if isinstance(volume, Tensor):
        moved = torch.movedim(volume, axis, 0)
        index = torch.from_numpy(neighbour_indices(moved.shape[0])).to(moved.device)
        return moved[index]
    moved_np = np.moveaxis(volume, axis, 0)
    return moved_np[neighbour_indices(moved_np.shape[0])]


def square_padding(height: int, width: int, exact: bool = False) -> Padding:
    """The zeros that centre a slice in a square.

    Args:
        height: Rows of the slice.
        width: Columns of the slice.
        exact: ``utils.get_padding`` (inference): ``diff // 2`` before and the rest after, always
            square. Else ``process_2D.pad_and_resize`` (tool, training): ``diff // 2`` on both
            sides, one pixel short of square when ``diff`` is odd.

    Returns:
        ``(top, bottom, left, right)``.
    """
    diff = abs(height - width)
    before = diff // 2
    after = diff - before if exact else before
    return (before, after, 0, 0) if height < width else (0, 0, before, after)


def pad_square(x: Array, exact: bool = False) -> tuple[Array, Padding]:
    """Pad the last two axes with zeros to a centred square (see :func:`square_padding`).

    Args:
        x: ``[..., H, W]`` numpy array or tensor.
        exact: Inference padding (square) instead of the tool's.

    Returns:
        The padded array and its padding.
    """
    top, bottom, left, right = padding = square_padding(x.shape[-2], x.shape[-1], exact)
    if isinstance(x, Tensor):
        return F.pad(x, (left, right, top, bottom)), padding
    widths = [(0, 0)] * (x.ndim - 2) + [(top, bottom), (left, right)]
    return np.pad(x, widths), padding


def unpad(x: Array, padding: Padding) -> Array:
    """Remove the padding of :func:`pad_square` from the last two axes."""
    top, bottom, left, right = padding
    return x[..., top : x.shape[-2] - bottom, left : x.shape[-1] - right]


@dataclass(frozen=True)
class Geometry:
    """Where encoded slices come from, to map predictions back (:func:`decode_slices`).

    Attributes:
        shape: The volume's ``(D, H, W)``.
        axis: The slicing axis.
        padding: ``(top, bottom, left, right)`` of every slice.
        size: Side of the encoded slices.
    """

    shape: tuple[int, int, int]
    axis: int
    padding: Padding
    size: int

    @property
    def num_slices(self) -> int:
        """Slices along :attr:`axis`."""
        return self.shape[self.axis]

    @property
    def plane(self) -> tuple[int, int]:
        """``(rows, columns)`` of a slice before padding."""
        rows, cols = (n for i, n in enumerate(self.shape) if i != self.axis)
        return rows, cols

    @property
    def padded(self) -> tuple[int, int]:
        """``(rows, columns)`` of a slice after padding."""
        top, bottom, left, right = self.padding
        return self.plane[0] + top + bottom, self.plane[1] + left + right


def plan(
    shape: Sequence[int], size: int = 512, axis: int | None = None, exact_padding: bool = False
) -> Geometry:
    """The geometry of a volume's encoding.

    Args:
        shape: ``(D, H, W)``.
        size: Side of the encoded slices.
        axis: Slicing axis; :func:`slice_axis` when ``None``.
        exact_padding: Inference padding (see :func:`square_padding`).

    Returns:
        The geometry.
    """
    if len(shape) != 3 or min(shape) < 1 or size < 1:
        msg = f"need a (D, H, W) shape and size >= 1, got shape {tuple(shape)}, size {size}"
        raise ValueError(msg)
    axis = slice_axis(shape) if axis is None else axis
    if axis not in (0, 1, 2):
        msg = f"axis must be 0, 1 or 2, got {axis}"
        raise ValueError(msg)
    d, h, w = (int(n) for n in shape)
    rows, cols = (n for i, n in enumerate((d, h, w)) if i != axis)
    return Geometry((d, h, w), axis, square_padding(rows, cols, exact_padding), size)


def _as_tensor(x: np.ndarray | Tensor) -> Tensor:
    """A tensor view of an array; types torch lacks (uint16, uint32) become int64."""
    if isinstance(x, Tensor):
        return x
    if x.dtype.kind == "u" and x.dtype != np.uint8:
        x = x.astype(np.int64)
    return torch.from_numpy(np.ascontiguousarray(x))


def _slices(
    volume: np.ndarray | Tensor, geometry: Geometry, indices: Sequence[int] | np.ndarray | None
) -> Tensor:
    """The chosen slices along the geometry's axis (taken first: cheap), as ``[n, h, w]``."""
    if tuple(volume.shape) != geometry.shape:
        msg = (
            f"volume of shape {tuple(volume.shape)} does not match the geometry's {geometry.shape}"
        )
        raise ValueError(msg)
    if isinstance(volume, Tensor):
        t = torch.movedim(volume, geometry.axis, 0)
        return t if indices is None else t[torch.as_tensor(np.asarray(indices), dtype=torch.long)]
    if indices is None:
        return _as_tensor(np.moveaxis(volume, geometry.axis, 0))
    return _as_tensor(
        np.moveaxis(np.take(volume, np.asarray(indices), geometry.axis), geometry.axis, 0)
    )


def _padded(t: Tensor, geometry: Geometry) -> Tensor:
    """Slices ``[n, h, w]`` with the geometry's zero padding."""
    top, bottom, left, right = geometry.padding
    return F.pad(t, (left, right, top, bottom))


def resample_image(
    volume: np.ndarray | Tensor,
    geometry: Geometry,
    indices: Sequence[int] | np.ndarray | None = None,
    inference: bool = False,
) -> Tensor:
    """Slices of an image volume, padded and resized (no neighbours).

    Args:
        volume: ``(D, H, W)`` intensities 0-255.
        geometry: From :func:`plan`.
        indices: Slices to take along the axis (all when ``None``).
        inference: Truncate raw values (inference path); else cast to uint8 first (floats
            truncated) and round and clip the result (tool path).

    Returns:
        float32 ``[n, size, size]`` holding integer values.
    """
    t = _slices(volume, geometry, indices)
    if not inference and t.dtype != torch.uint8:
        t = t.to(torch.float32).trunc().clamp(0, 255)  # astype(np.uint8) of 0-255 values
    padded = _padded(t.float(), geometry)
    out = resize(padded.float(), geometry.size, "bicubic")
    return quantize(out, "truncate" if inference else "round")


def resample_label(
    label: np.ndarray | Tensor,
    geometry: Geometry,
    indices: Sequence[int] | np.ndarray | None = None,
) -> Tensor:
    """Slices of a label volume, padded and resized with nearest (ids kept, no uint8 cast).

    Args:
        label: ``(D, H, W)`` integer ids.
        geometry: From :func:`plan`.
        indices: Slices to take along the axis (all when ``None``).

    Returns:
        int64 ``[n, size, size]``.
    """
    padded = _padded(_slices(label, geometry, indices).long(), geometry)
    return resize(padded, geometry.size, "nearest", rule="cv2")


def encode_slice(volume: np.ndarray | Tensor, geometry: Geometry, index: int) -> Tensor:
    """One encoded slice with its neighbours, as the tool writes it (training on the fly).

    Args:
        volume: ``(D, H, W)`` intensities 0-255.
        geometry: From :func:`plan` (tool padding).
        index: Slice along the geometry's axis.

    Returns:
        float32 ``[3, size, size]``: channels ``[i, i-1, i+1]``.
    """
    if not 0 <= index < geometry.num_slices:
        msg = f"slice {index} is outside 0..{geometry.num_slices - 1}"
        raise ValueError(msg)
    return resample_image(volume, geometry, neighbour_indices(geometry.num_slices)[index])


def encode_volume(
    volume: np.ndarray | Tensor, size: int = 512, axis: int | None = None, inference: bool = False
) -> tuple[Tensor, Geometry]:
    """Every slice of a volume, encoded.

    Args:
        volume: ``(D, H, W)`` intensities 0-255.
        size: Side of the encoded slices.
        axis: Slicing axis; :func:`slice_axis` when ``None``.
        inference: The inference path (exact padding, truncated values); else the tool's.

    Returns:
        float32 ``[N, 3, size, size]`` (channels ``[i, i-1, i+1]``) and the geometry.
    """
    geometry = plan(tuple(volume.shape), size, axis, exact_padding=inference)
    slices = resample_image(volume, geometry, inference=inference)
    return slices[torch.from_numpy(neighbour_indices(geometry.num_slices))], geometry


def decode_slices(masks: Array, geometry: Geometry) -> Array:
    """Map per-slice predictions back onto the volume (the original's ``process_output``).

    Nearest resize (torch's index rule) to the padded slice, padding removed, axis moved back.

    Args:
        masks: ``[..., N, s, s]`` per slice, any ``s`` (e.g. 128 or 512), numpy or tensor.
        geometry: The geometry of the encoding.

    Returns:
        ``[..., D, H, W]`` of the same kind and dtype.
    """
    if masks.shape[-3] != geometry.num_slices:
        msg = f"{masks.shape[-3]} slices given, the geometry has {geometry.num_slices}"
        raise ValueError(msg)
    t = _as_tensor(masks)
    if tuple(t.shape[-2:]) != geometry.padded:
        t = resize(t, geometry.padded, "nearest", rule="torch")
    t = torch.movedim(unpad(t, geometry.padding), -3, t.ndim - 3 + geometry.axis)
    return t.numpy() if isinstance(masks, np.ndarray) else t
