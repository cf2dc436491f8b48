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


def _component_box(component: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start (inclusive) and size of the bounding box of a non-empty mask, per axis."""
    found = np.nonzero(component)
    lo = np.array([int(idx.min()) for idx in found])
    hi = np.array([int(idx.max()) + 1 for idx in found])
    return lo, hi - lo


def _padding(size: np.ndarray) -> np.ndarray:
    """The challenge's padding of a bounding box: ``max(int(0.25 * size), 1)`` per axis."""
    return np.maximum((size * 0.25).astype(int), 1)


def _block_max(array: np.ndarray) -> np.ndarray:
    """2x max-pooling per axis from index 0, zeros appended to odd axes.

    The result of ``skimage.measure.block_reduce(array, (2,) * ndim, np.max)`` (its ``cval`` 0
    pads each axis at its end up to a multiple of 2).
    """
    even = np.pad(array, [(0, s % 2) for s in array.shape])
    blocks = even.reshape([v for s in even.shape for v in (s // 2, 2)])
    return blocks.max(axis=tuple(range(1, 2 * array.ndim, 2)))


def _component_edt(component: np.ndarray, max_voxels: int) -> tuple[np.ndarray, np.ndarray]:
    """The challenge's distance transform of the largest error component, on its bounding box.

    As ``compute_edt`` of ``CVPR25_iter_eval.py``: the bounding box, padded by
    :func:`_padding` per axis *without* clipping to the array, is a fresh zero array holding the
    component; if it has more than ``max_voxels`` voxels it is 2x max-pooled from its first
    voxel (the box start minus the padding) before the Euclidean distance transform (voxel
    units, plain :func:`scipy.ndimage.distance_transform_edt`) and the distances are repeated
    back. Only the bounding box of the component is returned: the official script writes zeros
    everywhere else.

    Args:
        component: Non-empty bool mask, 2D or 3D.
        max_voxels: Padded size above which the coarse grid is used (60,000,000 in the
            challenge).

    Returns:
        ``(dist, start)``: the distances on the bounding box (float64, not yet masked by the
        component) and the box's start per axis.
    """
    lo, size = _component_box(component)
    pad = _padding(size)
    padded_shape = size + 2 * pad
    coarse = int(np.prod(padded_shape)) > max_voxels
    # a coarse grid needs even axes: the extra zeros are the block_reduce padding at the end
    alloc = padded_shape + (padded_shape % 2 if coarse else 0)
    padded = np.zeros(tuple(int(s) for s in alloc), dtype=np.uint8)
    inner = tuple(slice(int(p), int(p + s)) for p, s in zip(pad, size, strict=True))
    padded[inner] = component[
        tuple(slice(int(a), int(a + s)) for a, s in zip(lo, size, strict=True))
    ]
    if not coarse:
        return ndimage.distance_transform_edt(padded)[inner], lo
    dist = ndimage.distance_transform_edt(_block_max(padded))
    # repeat(2) then crop == coarse cell (padded index // 2) of each voxel of the box
    cells = [(np.arange(s) + p) // 2 for p, s in zip(pad, size, strict=True)]
    return dist[np.ix_(*cells)], lo


def center_error_click(
    pred: np.ndarray, target: np.ndarray, seed: int = 42, max_voxels: int = MAX_EDT_VOXELS
) -> tuple[tuple[int, ...], bool] | None:
    """The next click of the CVPR 2025 interactive protocol: the centre of the largest error.

    The rule of ``CVPR25_iter_eval.py`` (``compute_edt`` and ``sample_coord``), step by step:

    1. the largest connected error component (:func:`largest_error_component`);
    2. its bounding box padded by ``max(int(0.25 * size), 1)`` per axis, *not* clipped to the
       array: a fresh zero array of the padded shape, so beyond the array counts as background;
    3. if that padded shape has more than ``max_voxels`` voxels (decided on the unclipped
       shape), 2x max-pooling on the grid that starts at the box start minus the padding (odd
       axes padded with zeros at their end, as ``skimage.measure.block_reduce``);
    4. the Euclidean distance transform (voxel units, spacing ignored), repeated back 2x on the
       coarse path, cropped to the box and multiplied by the component; if that is all zero,
       the component itself;
    5. a voxel of maximal value: ``numpy.random.RandomState(seed)`` (the official
       ``np.random.seed(42)``) chooses uniformly among the maximal voxels in
       :func:`numpy.argwhere` order, so the same inputs and seed always give the same click.

    Args:
        pred: Prediction of one class, bool (or 0/1) array, 2D or 3D.
        target: Ground truth of that class, same shape.
        seed: Seed of the tie-break.
        max_voxels: Padded size above which the distance transform runs on the coarser grid
            (60,000,000 in the challenge; smaller values exercise the same path cheaply).

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
    dist, start = _component_edt(component, max_voxels)
    crop = component[
        tuple(slice(int(a), int(a + s)) for a, s in zip(start, dist.shape, strict=True))
    ]
    dist = np.where(crop, dist, 0.0)
    if not dist.any():
        dist = crop.astype(np.float64)
    best = np.argwhere(dist == dist.max())
    local = best[np.random.RandomState(seed).choice(len(best))]
    coords = tuple(int(c + a) for c, a in zip(local, start, strict=True))
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
