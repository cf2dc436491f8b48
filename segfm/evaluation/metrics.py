"""Segmentation metrics on binary masks: Dice (DSC) and normalised surface Dice (NSD).

NSD follows DeepMind's surface-distance definition (surface elements weighted by their area,
tolerance in mm with the case spacing) through MONAI's ``compute_surface_dice(use_subvoxels=True)``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch
from monai.metrics import compute_surface_dice


def _as_bool(mask: np.ndarray | torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor) else mask).bool()


def dice(pred: np.ndarray | torch.Tensor, gt: np.ndarray | torch.Tensor) -> float:
    """Dice similarity coefficient of two binary masks.

    Args:
        pred: Predicted mask, any shape.
        gt: Reference mask of the same shape.

    Returns:
        ``2|A∩B| / (|A| + |B|)``; 1.0 when both masks are empty.
    """
    p, g = _as_bool(pred), _as_bool(gt)
    if p.shape != g.shape:
        msg = f"prediction shape {tuple(p.shape)} differs from reference shape {tuple(g.shape)}"
        raise ValueError(msg)
    total = int(p.sum()) + int(g.sum())
    if total == 0:
        return 1.0
    return 2.0 * int((p & g).sum()) / total


def surface_dice(
    pred: np.ndarray | torch.Tensor,
    gt: np.ndarray | torch.Tensor,
    spacing: Sequence[float],
    tolerance: float = 2.0,
) -> float:
    """Normalised surface Dice of two binary masks at a tolerance in mm.

    Args:
        pred: Predicted mask ``[*S]`` (2D or 3D).
        gt: Reference mask ``[*S]``.
        spacing: Pixel or voxel size in mm, in the axis order of ``S``.
        tolerance: Largest surface distance that counts as correct, in mm.

    Returns:
        NSD in [0, 1]; 1.0 when both masks are empty, 0.0 when exactly one is.
    """
    p, g = _as_bool(pred), _as_bool(gt)
    if p.shape != g.shape:
        msg = f"prediction shape {tuple(p.shape)} differs from reference shape {tuple(g.shape)}"
        raise ValueError(msg)
    if len(spacing) != p.ndim:
        msg = f"spacing {tuple(spacing)} has {len(spacing)} values for a {p.ndim}D mask"
        raise ValueError(msg)
    has_p, has_g = bool(p.any()), bool(g.any())
    if not has_p and not has_g:
        return 1.0
    if has_p != has_g:
        return 0.0
    onehot_p = torch.stack([~p, p])[None].float()
    onehot_g = torch.stack([~g, g])[None].float()
    with warnings.catch_warnings():
        # MONAI passes one of its own deprecated arguments internally (monai 1.5-1.6)
        warnings.simplefilter("ignore", FutureWarning)
        value = compute_surface_dice(
            onehot_p,
            onehot_g,
            class_thresholds=[float(tolerance)],
            spacing=[float(s) for s in spacing],
            use_subvoxels=p.ndim == 3,
        )
    return float(value[0, 0])


def case_scores(
    pred: np.ndarray | torch.Tensor,
    gt: np.ndarray | torch.Tensor,
    spacing: Sequence[float],
    class_ids: Sequence[int],
    tolerance: float = 2.0,
    nsd_min_dice: float = 0.2,
) -> dict[int, dict[str, float]]:
    """DSC and NSD of every class of one case.

    Args:
        pred: Predicted label map ``[*S]``.
        gt: Reference label map ``[*S]``.
        spacing: Voxel size in mm in the axis order of ``S``.
        class_ids: Classes to score.
        tolerance: NSD tolerance in mm.
        nsd_min_dice: NSD is reported as 0 when the class DSC is at or below this (MedSAM's rule,
            which skips the costly surface computation for failed predictions).

    Returns:
        ``{class_id: {"dsc": ..., "nsd": ...}}``.
    """
    p = torch.as_tensor(np.asarray(pred) if not isinstance(pred, torch.Tensor) else pred)
    g = torch.as_tensor(np.asarray(gt) if not isinstance(gt, torch.Tensor) else gt)
    scores: dict[int, dict[str, float]] = {}
    for c in class_ids:
        pc, gc = p == c, g == c
        d = dice(pc, gc)
        n = surface_dice(pc, gc, spacing, tolerance) if d > nsd_min_dice else 0.0
        scores[int(c)] = {"dsc": d, "nsd": n}
    return scores
