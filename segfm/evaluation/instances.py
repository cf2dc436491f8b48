"""Instance detection scores (CVPR 2025 text track, instance cases): F1 at an IoU threshold.

Instances are the non-zero ids of a label map. Predicted and reference instances are paired one to
one so that the number of pairs with IoU at or above the threshold is the largest possible, and
among those pairings the summed IoU is the largest; a pair counts as a true positive when its IoU
reaches the threshold. Ids are kept as 64-bit integers: ids above 255 are never wrapped. By
default the edge cases (empty sides, the binary split) follow ``CVPR25_text_eval.py``; see
:func:`instance_f1` for both rules.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

#: ``challenge``: the numbers of ``CVPR25_text_eval.py``; ``strict``: segfm's earlier rule
InstanceRules = Literal["challenge", "strict"]


def split_binary(labels: np.ndarray, background_required: bool = True) -> np.ndarray:
    """Give every connected component of a two-valued map its own id.

    A map with exactly two values is a binary mask: each non-zero value's face-connected
    components (6-connected in 3D, 4-connected in 2D) are numbered 1, 2, ... (a value's
    components are never merged with another value's). Other maps are returned unchanged.

    Args:
        labels: Label map of any dimension.
        background_required: Split only maps whose two values include 0 (segfm's earlier rule);
            False splits any two-valued map, as ``len(np.unique(seg)) == 2`` in
            ``CVPR25_text_eval.py`` (which then labels every non-zero value's components
            with ``cc3d``).

    Returns:
        The instance map (int64).
    """
    labels = np.asarray(labels)
    values = np.unique(labels)
    if values.size != 2 or (background_required and values[0] != 0):
        return labels.astype(np.int64)
    structure = ndimage.generate_binary_structure(labels.ndim, 1)
    out = np.zeros(labels.shape, dtype=np.int64)
    for value in values[values != 0]:
        components, _ = ndimage.label(labels == value, structure=structure)
        out[components > 0] = components[components > 0] + out.max()
    return out


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


def instance_f1(
    pred: np.ndarray,
    gt: np.ndarray,
    iou_threshold: float = 0.5,
    rules: InstanceRules = "challenge",
) -> dict[str, Any]:
    """Precision, recall, F1 and matched-pair Dice of predicted instances.

    Both rules share the matching and ``f1 = 2 tp / (2 tp + fp + fn)`` (equal to
    ``2PR / (P + R)``); they differ on empty sides and on the binary split:

    - ``challenge`` (default): the numbers of ``eval_tp_fp_fn`` and the F1 / DSC_TP code of
      ``CVPR25_text_eval.py``. No predicted instance: ``tp = fp = fn = 0``, so precision,
      recall and F1 are 0 (``fn`` is 0, not the number of reference instances), also when the
      reference is empty too; no matched pair: ``dsc_tp`` 0. Any map with exactly two values
      is split into components (``len(np.unique(seg)) == 2``).
    - ``strict`` (segfm's earlier rule): counts as they are. No instance on either side:
      precision, recall and F1 are 1.0 (nothing to find, nothing wrong); precision with no
      prediction is 0.0, recall with an empty reference 0.0; ``fn`` is the number of missed
      reference instances; no matched pair: ``dsc_tp`` NaN. Only a map of 0 and one other
      value is split.

    Both differ from the official script on purpose in one way: ids stay 64-bit, so ids above
    255 are never wrapped (the script casts both maps to uint8, merging e.g. instances 300 and
    556). The script's ``relabel_sequential`` changes nothing here: instances are matched by id,
    not by position.

    Args:
        pred: Predicted instance map ``[*S]``; a binary map (two values) is split into
            face-connected components first.
        gt: Reference instance map ``[*S]``, one id per instance, 0 for background.
        iou_threshold: Smallest IoU of a true positive, in (0, 1].
        rules: ``challenge`` or ``strict``, see above.

    Returns:
        ``tp``, ``fp``, ``fn``, ``n_gt``, ``n_pred`` (ints) and ``precision``, ``recall``, ``f1``,
        ``dsc_tp`` (floats; ``dsc_tp`` is the mean Dice over the true-positive pairs).

    Raises:
        ValueError: If the shapes differ, the threshold is outside (0, 1] or ``rules`` is
            unknown.
    """
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape:
        msg = f"prediction shape {pred.shape} differs from reference shape {gt.shape}"
        raise ValueError(msg)
    if not 0.0 < iou_threshold <= 1.0:
        msg = f"iou_threshold must be in (0, 1], got {iou_threshold}"
        raise ValueError(msg)
    if rules not in ("challenge", "strict"):
        msg = f"unknown instance rules {rules!r}; choose challenge or strict"
        raise ValueError(msg)
    challenge = rules == "challenge"
    instances = split_binary(pred, background_required=not challenge)
    g_ids, p_ids, iou = _overlaps(gt.astype(np.int64), instances)
    rows, cols = _match(iou, iou_threshold)
    tp, n_gt, n_pred = int(rows.size), int(g_ids.size), int(p_ids.size)
    fp, fn = n_pred - tp, n_gt - tp
    matched = iou[rows, cols]
    dsc_tp = float(np.mean(2 * matched / (1 + matched))) if tp else math.nan
    if challenge:
        if n_pred == 0:  # eval_tp_fp_fn: no segmentation, no counts
            fn = 0
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
        dsc_tp = dsc_tp if tp else 0.0
    else:
        precision = tp / n_pred if n_pred else float(n_gt == 0)
        recall = tp / n_gt if n_gt else float(n_pred == 0)
        f1 = 2 * tp / (2 * tp + fp + fn) if (tp + fp + fn) else 1.0
    return {
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "n_gt": n_gt,
        "n_pred": n_pred,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "dsc_tp": dsc_tp,
    }
