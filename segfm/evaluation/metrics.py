"""Segmentation metrics on binary masks: Dice (DSC), normalised surface Dice (NSD) and HD95.

NSD follows DeepMind's surface-distance definition (surface elements weighted by their area,
tolerance in mm with the case spacing) through MONAI's ``compute_surface_dice(use_subvoxels=True)``.
HD95 is MONAI's ``compute_hausdorff_distance(percentile=95)`` with the case spacing.

Case-level rules of the CVPR 2025 challenges: :func:`interactive_case_scores` (NSD only when the
case-mean DSC exceeds 0.2) and :func:`semantic_case_scores` (text track, no such rule).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

#: the interactive track computes NSD only when the case-mean DSC exceeds this
INTERACTIVE_NSD_MIN_DICE = 0.2


def _as_bool(mask: np.ndarray | torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor) else mask).bool()


def _check_pair(p: torch.Tensor, g: torch.Tensor, spacing: Sequence[float]) -> None:
    if p.shape != g.shape:
        msg = f"prediction shape {tuple(p.shape)} differs from reference shape {tuple(g.shape)}"
        raise ValueError(msg)
    if len(spacing) != p.ndim:
        msg = f"spacing {tuple(spacing)} has {len(spacing)} values for a {p.ndim}D mask"
        raise ValueError(msg)


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
    _check_pair(p, g, spacing)
    has_p, has_g = bool(p.any()), bool(g.any())
    if not has_p and not has_g:
        return 1.0
    if has_p != has_g:
        return 0.0
    onehot_p = torch.stack([~p, p])[None].float()
    onehot_g = torch.stack([~g, g])[None].float()
    # scores run inside a bf16-mixed test step too; MONAI's edge stacking fails under autocast
    with warnings.catch_warnings(), torch.autocast(p.device.type, enabled=False):
        # MONAI passes one of its own deprecated arguments internally (monai 1.5-1.6)
        warnings.simplefilter("ignore", FutureWarning)
        from monai.metrics import compute_surface_dice  # monai takes a second to import

        value = compute_surface_dice(
            onehot_p,
            onehot_g,
            class_thresholds=[float(tolerance)],
            spacing=[float(s) for s in spacing],
            use_subvoxels=p.ndim == 3,
        )
    return float(value[0, 0])


def hd95(
    pred: np.ndarray | torch.Tensor, gt: np.ndarray | torch.Tensor, spacing: Sequence[float]
) -> float:
    """95th percentile Hausdorff distance of two binary masks, in mm.

    The larger of the two directed 95th percentiles of the distances between the masks' boundary
    voxels, measured with the voxel size (anisotropic spacing is honoured).

    Args:
        pred: Predicted mask ``[*S]`` (2D or 3D).
        gt: Reference mask ``[*S]``.
        spacing: Pixel or voxel size in mm, in the axis order of ``S``.

    Returns:
        HD95 in mm; 0.0 when both masks are empty, ``inf`` when exactly one is (no finite distance
        exists; averages over cases then show the failure instead of hiding it as NaN would).
    """
    p, g = _as_bool(pred), _as_bool(gt)
    _check_pair(p, g, spacing)
    has_p, has_g = bool(p.any()), bool(g.any())
    if not has_p and not has_g:
        return 0.0
    if has_p != has_g:
        return math.inf
    with warnings.catch_warnings(), torch.autocast(p.device.type, enabled=False):
        warnings.simplefilter("ignore", FutureWarning)  # MONAI's own deprecated argument
        from monai.metrics import compute_hausdorff_distance

        value = compute_hausdorff_distance(
            p[None, None].float(),
            g[None, None].float(),
            include_background=True,
            percentile=95,
            spacing=[float(s) for s in spacing],
        )
    return float(value[0, 0])


def _present_classes(gt: torch.Tensor, class_ids: Sequence[int] | None) -> list[int]:
    if class_ids is not None:
        return [int(c) for c in class_ids]
    return [int(c) for c in torch.unique(gt).tolist() if c != 0]


def _as_labels(labels: np.ndarray | torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels)


def interactive_case_scores(
    pred: np.ndarray | torch.Tensor,
    gt: np.ndarray | torch.Tensor,
    spacing: Sequence[float],
    class_ids: Sequence[int] | None = None,
    tolerance: float = 2.0,
) -> dict[str, Any]:
    """DSC and NSD of one case under the CVPR 2025 interactive-track rule.

    DSC is averaged over the classes; NSD is computed only when that case-mean DSC exceeds 0.2,
    otherwise the case NSD and every class NSD are 0 (the rule is on the case mean). This is the
    one NSD rule of every interactive test (MedSAM's box test and SAM-Med3D's click test
    included).

    Args:
        pred: Predicted label map ``[*S]``.
        gt: Reference label map ``[*S]``.
        spacing: Voxel size in mm in the axis order of ``S``.
        class_ids: Classes to score; defaults to the non-zero values of ``gt``.
        tolerance: NSD tolerance in mm.

    Returns:
        ``{"classes": {class_id: {"dsc": ..., "nsd": ...}}, "dsc": mean, "nsd": mean}``; the case
        values are NaN when there is no class to score.
    """
    p, g = _as_labels(pred), _as_labels(gt)
    classes = _present_classes(g, class_ids)
    per_class = {c: {"dsc": dice(p == c, g == c), "nsd": 0.0} for c in classes}
    if not classes:
        return {"classes": per_class, "dsc": math.nan, "nsd": math.nan}
    case_dsc = float(np.mean([s["dsc"] for s in per_class.values()]))
    if case_dsc > INTERACTIVE_NSD_MIN_DICE:
        for c, s in per_class.items():
            s["nsd"] = surface_dice(p == c, g == c, spacing, tolerance)
    case_nsd = float(np.mean([s["nsd"] for s in per_class.values()]))
    return {"classes": per_class, "dsc": case_dsc, "nsd": case_nsd}


def semantic_case_scores(
    pred: np.ndarray | torch.Tensor,
    gt: np.ndarray | torch.Tensor,
    spacing: Sequence[float],
    class_ids: Sequence[int] | None = None,
    tolerance: float = 2.0,
) -> dict[str, Any]:
    """DSC and NSD of one case under the CVPR 2025 text-track semantic rule.

    Every class gets DSC and NSD (no DSC threshold); the case values are the NaN-ignoring means.

    Args:
        pred: Predicted label map ``[*S]``.
        gt: Reference label map ``[*S]``.
        spacing: Voxel size in mm in the axis order of ``S``.
        class_ids: Classes to score (the text prompts' ids present in ``gt``); defaults to the
            non-zero values of ``gt``.
        tolerance: NSD tolerance in mm.

    Returns:
        ``{"classes": {class_id: {"dsc": ..., "nsd": ...}}, "dsc": mean, "nsd": mean}``; the case
        values are NaN when there is no class to score.
    """
    p, g = _as_labels(pred), _as_labels(gt)
    per_class = {
        c: {"dsc": dice(p == c, g == c), "nsd": surface_dice(p == c, g == c, spacing, tolerance)}
        for c in _present_classes(g, class_ids)
    }
    return {
        "classes": per_class,
        "dsc": _nanmean([s["dsc"] for s in per_class.values()]),
        "nsd": _nanmean([s["nsd"] for s in per_class.values()]),
    }


def _nanmean(values: Sequence[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return float(sum(kept) / len(kept)) if kept else math.nan
