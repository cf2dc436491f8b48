"""Instance detection scores (CVPR 2025 text track, instance cases): F1 at an IoU threshold.

Instances are the non-zero ids of a label map. Predicted and reference instances are paired one to
one so that the number of pairs with IoU at or above the threshold is the largest possible, and
among those pairings the summed IoU is the largest; a pair counts as a true positive when its IoU
reaches the threshold. Ids are kept as 64-bit integers: ids above 255 are never wrapped.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.optimize import linear_sum_assignment


def split_binary(labels: np.ndarray) -> np.ndarray:
    """Give every connected component of a binary mask its own id (the rest is unchanged).

    A map with exactly two values, one of them 0, is a binary mask: its foreground is split into
    face-connected components (6-connected in 3D, 4-connected in 2D) numbered 1, 2, ...

    Args:
        labels: Label map of any dimension.

    Returns:
        The instance map (int64).
    """
    labels = np.asarray(labels)
    values = np.unique(labels)
    if values.size == 2 and values[0] == 0:
        structure = ndimage.generate_binary_structure(labels.ndim, 1)
        components, _ = ndimage.label(labels != 0, structure=structure)
        return components.astype(np.int64)
    return labels.astype(np.int64)


def _overlaps(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sizes of the instances and the IoU matrix between them.

    Returns:
        ``(gt_ids, pred_ids, iou)``, with ``iou[i, j]`` between ``gt_ids[i]`` and ``pred_ids[j]``.
    """
    g_ids, g_idx, g_size = np.unique(gt, return_inverse=True, return_counts=True)
    p_ids, p_idx, p_size = np.unique(pred, return_inverse=True, return_counts=True)
    g_idx, p_idx = g_idx.reshape(-1), p_idx.reshape(-1)
    both = (gt.reshape(-1) != 0) & (pred.reshape(-1) != 0)
    pairs, inter = np.unique(g_idx[both] * p_ids.size + p_idx[both], return_counts=True)
    gi, pi = np.divmod(pairs, p_ids.size)
    iou = np.zeros((g_ids.size, p_ids.size))
    iou[gi, pi] = inter / (g_size[gi] + p_size[pi] - inter)
    g_keep, p_keep = g_ids != 0, p_ids != 0
    return g_ids[g_keep], p_ids[p_keep], iou[np.ix_(g_keep, p_keep)]


def _match(iou: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns of the optimal one-to-one pairs with IoU at or above the threshold."""
    rows_used = np.flatnonzero(iou.max(axis=1, initial=0.0) > 0)
    cols_used = np.flatnonzero(iou.max(axis=0, initial=0.0) > 0)
    if rows_used.size == 0:
        return rows_used, cols_used
    sub = iou[np.ix_(rows_used, cols_used)]
    # a pair over the threshold is worth 1; the IoU term sums to less than 1 over any matching,
    # so it only breaks ties between matchings with the same number of such pairs
    gain = (sub >= threshold) + sub / (min(sub.shape) + 1)
    r, c = linear_sum_assignment(gain, maximize=True)
    ok = sub[r, c] >= threshold
    return rows_used[r[ok]], cols_used[c[ok]]


def instance_f1(pred: np.ndarray, gt: np.ndarray, iou_threshold: float = 0.5) -> dict[str, Any]:
    """Precision, recall, F1 and matched-pair Dice of predicted instances.

    Args:
        pred: Predicted instance map ``[*S]``; a binary map (two values, one of them 0) is split
            into face-connected components first.
        gt: Reference instance map ``[*S]``, one id per instance, 0 for background.
        iou_threshold: Smallest IoU of a true positive, in (0, 1].

    Returns:
        ``tp``, ``fp``, ``fn``, ``n_gt``, ``n_pred`` (ints) and ``precision``, ``recall``, ``f1``,
        ``dsc_tp`` (floats). ``f1 = 2 tp / (2 tp + fp + fn)``, equal to ``2PR / (P + R)``; with no
        instance on either side precision, recall and F1 are 1.0 (nothing to find, nothing wrong).
        Precision with no prediction is 0.0 (1.0 if the reference is empty too), and likewise
        recall with an empty reference. ``dsc_tp`` is the mean Dice over the true-positive pairs,
        NaN when there is none.

    Raises:
        ValueError: If the shapes differ or the threshold is outside (0, 1].
    """
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape:
        msg = f"prediction shape {pred.shape} differs from reference shape {gt.shape}"
        raise ValueError(msg)
    if not 0.0 < iou_threshold <= 1.0:
        msg = f"iou_threshold must be in (0, 1], got {iou_threshold}"
        raise ValueError(msg)
    g_ids, p_ids, iou = _overlaps(gt.astype(np.int64), split_binary(pred))
    rows, cols = _match(iou, iou_threshold)
    tp, n_gt, n_pred = int(rows.size), int(g_ids.size), int(p_ids.size)
    fp, fn = n_pred - tp, n_gt - tp
    matched = iou[rows, cols]
    return {
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "n_gt": n_gt,
        "n_pred": n_pred,
        "precision": tp / n_pred if n_pred else float(n_gt == 0),
        "recall": tp / n_gt if n_gt else float(n_pred == 0),
        "f1": 2 * tp / (2 * tp + fp + fn) if (tp + fp + fn) else 1.0,
        "dsc_tp": float(np.mean(2 * matched / (1 + matched))) if tp else math.nan,
    }
