"""SegVol's supervision: ``BinaryDiceLoss`` + ``BCELoss`` (``utils/loss.py`` of SegVol)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def dice_bce(
    logits: Tensor, target: Tensor, valid: Tensor | None = None, per_slice: bool = False
) -> Tensor:
    """SegVol's loss: ``BinaryDiceLoss`` (sigmoid, smooth 1, mean over rows) + BCE (mean).

    Args:
        logits: ``[N, 1, *S]``.
        target: Binary ``[N, *S]``.
        valid: Voxels that count ``[N, *S]`` (pseudo masks' -1 voxels are left out), or None.
        per_slice: One Dice row per slice (first spatial axis) instead of per volume: what the
            original's ``squeeze()`` computed with a batch of one.
    """
    target = target.float()
    prob = torch.sigmoid(logits[:, 0])
    weight = torch.ones_like(target) if valid is None else valid.float()
    prob, target = prob * weight, target * weight
    start = 2 if per_slice else 1
    num = (prob * target).flatten(start).sum(-1)
    den = prob.flatten(start).sum(-1) + target.flatten(start).sum(-1) + 1.0
    bce = F.binary_cross_entropy_with_logits(logits[:, 0], target, weight=weight, reduction="sum")
    return (1 - 2 * num / den).mean() + bce / weight.sum().clamp(min=1.0)
