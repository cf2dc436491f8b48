"""Point prompts from 3D binary masks: SegVol's fixed-size set of positives and negatives.

Unlike the original (``utils/monai_inferers_utils.py``), an empty mask gives *no* prompt
(``None``) instead of sentinel coordinates (-1) that the network would embed as real points.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _pick(candidates: Tensor, count: int, generator: torch.Generator | None) -> Tensor:
    """``count`` distinct rows of ``candidates [M, 3]`` at random (fewer if ``M < count``)."""
    if count == 0:
        return candidates[:0]
    order = torch.randperm(candidates.shape[0], generator=generator)[:count]
    return candidates[order.to(candidates.device)]


def sample_points(
    mask: Tensor,
    max_positive: int = 10,
    max_negative: int = 10,
    min_positive: int = 0,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor] | None:
    """SegVol's point prompt: 1 positive, ``U[min, max]`` more positives, ``U[0, max]`` negatives.

    As the original's ``select_points``: the first positive is drawn on its own, the extra
    positives are distinct from each other but may repeat it (so a mask of ``n`` voxels gives
    ``1 + min(extra, n)`` positive labels), the negatives are distinct. Padded to
    ``1 + max_positive + max_negative`` points with label -1 (SAM's "not a point" token; its
    coordinates are never embedded).

    Args:
        mask: Binary target ``[D, H, W]``.
        max_positive: Most extra positive points.
        max_negative: Most negative points.
        min_positive: Fewest extra positive points (4 for SegVol's pseudo-mask prompts).
        generator: CPU random generator.

    Returns:
        Coordinates ``[P, 3]`` (voxel indices, float) and labels ``[P]`` (1, 0 or -1), or None
        when the mask is empty.
    """
    positive = torch.nonzero(mask)
    if positive.numel() == 0:
        return None
    extra = int(torch.randint(min_positive, max_positive + 1, (1,), generator=generator))
    negatives = int(torch.randint(0, max_negative + 1, (1,), generator=generator))
    first = int(torch.randint(positive.shape[0], (1,), generator=generator))
    pos = torch.cat([positive[first : first + 1], _pick(positive, extra, generator)])
    neg = _pick(torch.nonzero(~mask.bool()), negatives, generator)
    total = 1 + max_positive + max_negative
    coords = torch.zeros((total, 3), device=mask.device)
    labels = torch.full((total,), -1.0, device=mask.device)
    coords[: len(pos)] = pos.float()
    labels[: len(pos)] = 1.0
    coords[len(pos) : len(pos) + len(neg)] = neg.float()
    labels[len(pos) : len(pos) + len(neg)] = 0.0
    return coords, labels
