"""Click simulation: where the next corrective click goes, given a prediction and the truth.

Two rules:

- :func:`sample_error_clicks`, the training rule of SAM-Med3D: one voxel drawn uniformly from the
  error region (false negatives and false positives), batched in torch.
- :func:`center_error_click`, the evaluation rule of the CVPR 2025 interactive protocol: the
  innermost voxel (largest distance to the border) of the largest connected error component, one
  item in numpy.

Coordinates are always voxel indices in array-axis order (``(z, y, x)`` in 3D, ``(y, x)`` in 2D).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

#: padded crops with more voxels than this get their distance transform on a 2x coarser grid
MAX_EDT_VOXELS = 60_000_000


# --- training rule ---------------------------------------------------------------------------


def sample_error_clicks(
    pred: Tensor, target: Tensor, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Draw one corrective click per item, uniformly over its error region (SAM-Med3D's rule).

    For each item, the error region is ``FN | FP`` with ``FN = target & ~pred`` and
    ``FP = ~target & pred``; one voxel of it is drawn uniformly, and it is a positive click if it
    lies in ``FN``, negative if in ``FP``. Two fixes to the original
    (``get_next_click3D_torch_2``):

    - The original thresholded raw logits at 0.5 (as if they were probabilities); here the caller
      passes an already thresholded bool prediction (``logits > 0`` or ``sigmoid > 0.5``).
    - The original crashed when an item had no error. Here such an item gets a positive click
      drawn uniformly from its target, or, if the target is empty too, a negative click drawn
      uniformly from the (all-background) volume.

    Only ``B`` random numbers are drawn, on the generator's device (any device), then moved to the
    masks' device; the chosen voxel is the ``floor(u * count)``-th candidate in raster order. So a
    CPU generator drives GPU masks, and a seed gives the same clicks on every device.

    Args:
        pred: Thresholded prediction, bool ``[B, *S]`` (``S`` spatial, any number of axes).
        target: Ground truth, bool ``[B, *S]``.
        generator: Random generator for reproducible clicks; ``None`` uses the global generator
            of the masks' device.

    Returns:
        ``(coords, labels)``: coords ``[B, len(S)]`` int64, the voxel index along each spatial
        axis; labels ``[B]`` int64, 1 for a positive (foreground) click, 0 for a negative one.

    Raises:
        ValueError: If the masks are not bool, differ in shape or have no spatial axis.
    """
    if pred.dtype != torch.bool or target.dtype != torch.bool:
        msg = (
            f"pred and target must be bool masks, got {pred.dtype} and {target.dtype}; "
            "threshold the prediction first (logits > 0)"
        )
        raise ValueError(msg)
    if pred.shape != target.shape or pred.ndim < 2 or pred.numel() == 0:
        msg = (
            f"pred and target must be non-empty [B, *S] of one shape, "
            f"got {tuple(pred.shape)} and {tuple(target.shape)}"
        )
        raise ValueError(msg)
    batch, spatial = pred.shape[0], pred.shape[1:]
    pred_f = pred.reshape(batch, -1)
    target_f = target.reshape(batch, -1)
    error = pred_f ^ target_f
    has_error = error.any(dim=1, keepdim=True)
    has_target = target_f.any(dim=1, keepdim=True)
    # no error: the target; empty target too: the background (all voxels, since target is empty)
    candidates = torch.where(has_error, error, torch.where(has_target, target_f, ~target_f))
    ranks = candidates.cumsum(dim=1)  # ranks[b, i] = number of candidates at or before i
    count = ranks[:, -1]
    device = generator.device if generator is not None else pred.device
    u = torch.rand(batch, generator=generator, device=device, dtype=torch.float64)
    u = u.to(pred.device)
    pick = (u * count).floor().long().clamp(max=count - 1)  # 0-based rank among the candidates
    flat = torch.searchsorted(ranks, (pick + 1).unsqueeze(1)).squeeze(1)  # first rank == pick+1
    coords = torch.stack(torch.unravel_index(flat, spatial), dim=1)
    labels = target_f.gather(1, flat.unsqueeze(1)).squeeze(1).long()
    return coords, labels


# --- evaluation rule -------------------------------------------------------------------------


def _check_pair(pred: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred, dtype=bool)
    target = np.asarray(target, dtype=bool)
    if pred.shape != target.shape or pred.ndim not in (2, 3):
        msg = (
            f"pred and target must be 2D or 3D arrays of one shape, "
            f"got {pred.shape} and {target.shape}"
        )
        raise ValueError(msg)
    return pred, target


def largest_error_component(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The largest connected component of the error ``pred != target``.

    Connectivity is full: 26 neighbours in 3D, 8 in 2D. Between components of equal size, the one
    reached first in raster order wins.

    Args:
        pred: Prediction, bool (or 0/1) array, 2D or 3D.
        target: Ground truth of the same shape.

    Returns:
        Bool array of the input shape, all False when there is no error.

    Raises:
        ValueError: If the arrays differ in shape or are not 2D or 3D.
    """
    pred, target = _check_pair(pred, target)
    error = pred != target
    structure = np.ones((3,) * error.ndim, dtype=bool)
    labels, n = ndimage.label(error, structure=structure)
    if n == 0:
        return error
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def _padded_box(component: np.ndarray) -> tuple[slice, ...]:
    """Bounding box of a non-empty mask, padded by ``max(int(0.25 * size), 1)`` per axis."""
    boxes = []
    for axis, idx in enumerate(np.nonzero(component)):
        lo, hi = int(idx.min()), int(idx.max())
        pad = max(int(0.25 * (hi - lo + 1)), 1)
        boxes.append(slice(max(lo - pad, 0), min(hi + pad + 1, component.shape[axis])))
    return tuple(boxes)


def _edt_outside_is_background(mask: np.ndarray) -> np.ndarray:
    """Euclidean distance (voxel units) of each voxel to the nearest background voxel.

    Voxels beyond the array count as background (one layer of zeros is added around it).
    """
    padded = np.pad(mask, 1, constant_values=False)
    dist = ndimage.distance_transform_edt(padded)
    return dist[(slice(1, -1),) * mask.ndim]


def _coarse_edt(mask: np.ndarray) -> np.ndarray:
    """:func:`_edt_outside_is_background` on a 2x max-pooled grid, repeated back to full size."""
    even = np.pad(mask, [(0, s % 2) for s in mask.shape], constant_values=False)
    blocks = even.reshape([v for s in even.shape for v in (s // 2, 2)])
    coarse = blocks.max(axis=tuple(range(1, 2 * mask.ndim, 2)))
    dist = _edt_outside_is_background(coarse)
    for axis in range(mask.ndim):
        dist = np.repeat(dist, 2, axis=axis)
    return dist[tuple(slice(0, s) for s in mask.shape)]


def center_error_click(
    pred: np.ndarray, target: np.ndarray, seed: int = 42, max_voxels: int = MAX_EDT_VOXELS
) -> tuple[tuple[int, ...], bool] | None:
    """The next click of the CVPR 2025 interactive protocol: the centre of the largest error.

    The largest connected error component (:func:`largest_error_component`) is cropped to its
    bounding box padded by ``max(int(0.25 * size), 1)`` per axis (clipped to the array); inside
    the crop, the Euclidean distance transform (voxel units, spacing ignored) gives each component
    voxel its distance to the nearest non-component voxel, outside the array counting as
    non-component. A crop of more than ``max_voxels`` voxels is 2x max-pooled first and the
    distances repeated back. The click is a voxel of maximal distance; ties are broken by
    ``numpy.random.RandomState(seed)`` choosing uniformly among the maximal voxels in
    :func:`numpy.argwhere` order, so the same inputs and seed always give the same click.

    Args:
        pred: Prediction of one class, bool (or 0/1) array, 2D or 3D.
        target: Ground truth of that class, same shape.
        seed: Seed of the tie-break.
        max_voxels: Crop size above which the distance transform runs on the coarser grid.

    Returns:
        ``(coords, is_positive)``: the voxel indices in array-axis order and whether the target
        is True there (a foreground click; else a background click). ``None`` if the prediction
        equals the target everywhere.

    Raises:
        ValueError: If the arrays differ in shape or are not 2D or 3D.
    """
    pred, target = _check_pair(pred, target)
    component = largest_error_component(pred, target)
    if not component.any():
        return None
    box = _padded_box(component)
    crop = component[box]
    dist = _coarse_edt(crop) if crop.size > max_voxels else _edt_outside_is_background(crop)
    dist = np.where(crop, dist, 0.0)
    if not dist.any():
        dist = crop.astype(np.float64)
    best = np.argwhere(dist == dist.max())
    local = best[np.random.RandomState(seed).choice(len(best))]
    coords = tuple(int(c + s.start) for c, s in zip(local, box, strict=True))
    return coords, bool(target[coords])


# --- accumulated clicks ----------------------------------------------------------------------


@dataclass
class Clicks:
    """The clicks given so far to one object, in the order they were given.

    Attributes:
        ndim: Number of spatial axes of a click.
        coords: Voxel indices of each click, array-axis order.
        labels: 1 for a positive (foreground) click, 0 for a negative one.
    """

    ndim: int = 3
    coords: list[tuple[int, ...]] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)

    def add(self, coords: tuple[int, ...], positive: bool) -> None:
        """Append one click.

        Args:
            coords: Voxel indices, array-axis order, ``ndim`` of them.
            positive: Whether it is a foreground click.

        Raises:
            ValueError: If ``coords`` does not have ``ndim`` values.
        """
        if len(coords) != self.ndim:
            msg = f"a click needs {self.ndim} coordinates, got {tuple(coords)}"
            raise ValueError(msg)
        self.coords.append(tuple(int(c) for c in coords))
        self.labels.append(int(bool(positive)))

    def __len__(self) -> int:
        return len(self.labels)

    def as_tensors(self, device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
        """The clicks as a batch of one, the layout of point prompts.

        Args:
            device: Device of the tensors.

        Returns:
            ``(coords, labels)``: coords ``[1, P, ndim]`` float32, labels ``[1, P]`` int64.
        """
        coords = torch.tensor(self.coords, dtype=torch.float32, device=device)
        coords = coords.reshape(1, len(self), self.ndim)
        labels = torch.tensor(self.labels, dtype=torch.int64, device=device).reshape(1, len(self))
        return coords, labels
