"""Random subsets and hard-negative sampling shared by the InfoNCE losses.

Every random choice is a ``torch.randperm`` drawn on the CPU from the caller's generator, in the
order the original (``sam/models/frameworks/sam.py``) draws them, so that a reference fed the same
generator draws the same subsets.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

Excluded = Literal["dropped", "zeroed"]


def randperm(n: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """A random permutation of ``range(n)``, drawn on the CPU, on ``device``."""
    return torch.randperm(n, generator=generator).to(device)


def random_subset(index: Tensor, count: int, generator: torch.Generator | None) -> Tensor:
    """At most ``count`` entries of ``index``, drawn without replacement (no draw if it fits)."""
    if index.numel() <= count:
        return index
    return index[randperm(index.numel(), generator, index.device)[:count]]


def hard_negatives(
    score: Tensor,
    logits: Tensor,
    exclude: Tensor,
    hard_pool: int,
    count: int,
    generator: torch.Generator | None,
    excluded: Excluded = "dropped",
    unused: Tensor | None = None,
    zero_logits: bool = False,
) -> Tensor:
    """Negative logits: ``count`` drawn at random among the ``hard_pool`` highest scores.

    ``excluded="dropped"``: excluded candidates get ``-inf`` before the ranking and never count as
    negatives; a row with fewer allowed candidates than ``count`` is padded with ``-inf`` logits,
    which add nothing to the softmax. ``excluded="zeroed"`` is the original's rule: the ranking
    score of an excluded candidate is multiplied by 0, so it can rank among the hardest, and if
    drawn its logit is its similarity (fine loss) or 0 (``zero_logits``, coarse loss).

    Each row draws ``randperm(n)[:count]`` over its ``n`` allowed top-ranked candidates (the
    original's per-query draw when all ``hard_pool`` are allowed).

    Args:
        score: Ranking score of every candidate ``[Q, N]``.
        logits: Logit of every candidate ``[Q, N]`` (what the loss sees).
        exclude: Candidates within the exclusion radius (or the positive) ``[Q, N]`` (bool).
        hard_pool: How many top-ranked candidates to draw from.
        count: Negatives per query.
        generator: CPU random generator.
        excluded: ``dropped`` (segfm) or ``zeroed`` (the original).
        unused: Candidates that are never negatives, whatever ``excluded`` says ``[Q, N]`` or
            ``[N]`` (bool; voxels outside the source volume).
        zero_logits: With ``zeroed``, excluded candidates' logits are 0 (the coarse loss).

    Returns:
        ``[Q, min(count, hard_pool, N)]`` negative logits (``-inf`` where none is left).
    """
    if excluded == "dropped":
        drop = exclude if unused is None else exclude | unused
        rank = score.masked_fill(drop, float("-inf"))
    else:
        rank = score.masked_fill(exclude, 0.0)
        if unused is not None:
            rank.masked_fill_(unused, float("-inf"))
        if zero_logits:
            logits = logits.masked_fill(exclude, 0.0)
    pool = min(hard_pool, score.shape[1])
    top, top_index = rank.topk(pool, dim=1)
    allowed = torch.isfinite(top).sum(1).tolist()
    size = min(count, pool)
    pick = torch.zeros(top.shape[0], size, dtype=torch.long)
    for row, n in enumerate(allowed):
        drawn = torch.randperm(n, generator=generator)[:size]
        pick[row, : drawn.numel()] = drawn
        pick[row, drawn.numel() :] = pool - 1  # an excluded one (-inf): pads the row
    pick = pick.to(top.device)
    out = logits.gather(1, top_index.gather(1, pick))
    filled = torch.arange(size)[None] < torch.tensor(allowed)[:, None]
    return out.masked_fill(~filled.to(out.device), float("-inf"))


def info_nce(positive: Tensor, negatives: Tensor, temperature: float) -> Tensor:
    """Cross-entropy of the positive (class 0) against the negatives, at ``temperature``.

    Args:
        positive: ``[Q]`` positive logits (similarities).
        negatives: ``[Q, K]`` negative logits, ``-inf`` for none.
        temperature: Softmax temperature.

    Returns:
        The mean loss (0-d).
    """
    logits = torch.cat([positive[:, None], negatives], dim=1) / temperature
    target = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits, target)


def distances(source: Tensor, target: Tensor) -> Tensor:
    """Exact Euclidean distances ``[Q, N]`` between ``[Q, 3]`` and ``[N, 3]`` points (mm).

    Not the matrix-product form of ``torch.cdist``, whose rounding (about 1e-3 mm at 200 mm) moves
    points across a radius that the original's differences respect.
    """
    return torch.cdist(source.float(), target.float(), compute_mode="donot_use_mm_for_euclid_dist")


def nearest(source: Tensor, target: Tensor, chunk: int = 512) -> tuple[Tensor, Tensor]:
    """Distance to and index of the nearest ``target`` point of each ``source`` point.

    Args:
        source: ``[Q, 3]`` points (mm).
        target: ``[N, 3]`` points (mm), N >= 1.
        chunk: Source points per distance block (memory bound).

    Returns:
        ``[Q]`` distances and ``[Q]`` indices into ``target``.
    """
    dists, index = [], []
    for part in source.split(chunk):
        d = distances(part, target)
        m = d.min(dim=1)
        dists.append(m.values)
        index.append(m.indices)
    if not dists:
        empty = source.new_zeros(0)
        return empty, empty.long()
    return torch.cat(dists), torch.cat(index)
