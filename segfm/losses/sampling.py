"""Hard-negative sampling shared by the InfoNCE losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def rand_like_cpu(
    shape: tuple[int, ...], like: Tensor, generator: torch.Generator | None
) -> Tensor:
    """Uniform numbers drawn on the CPU (reproducible by a CPU generator) on ``like``'s device."""
    return torch.rand(shape, generator=generator).to(like.device)


def random_subset(index: Tensor, count: int, generator: torch.Generator | None) -> Tensor:
    """At most ``count`` entries of ``index``, drawn without replacement."""
    if index.numel() <= count:
        return index
    order = torch.randperm(index.numel(), generator=generator)[:count].to(index.device)
    return index[order]


def hard_negatives(
    score: Tensor,
    logits: Tensor,
    exclude: Tensor,
    hard_pool: int,
    count: int,
    generator: torch.Generator | None,
) -> Tensor:
    """Negative logits: ``count`` drawn at random among the ``hard_pool`` highest scores.

    Excluded candidates get ``-inf`` before the ranking and never count as negatives: a row with
    fewer allowed candidates than ``count`` is padded with ``-inf`` logits, which add nothing to
    the softmax (the original multiplied excluded similarities by 0, which keeps them as
    negatives of similarity 0).

    Args:
        score: Ranking score of every candidate ``[Q, N]``.
        logits: Logit of every candidate ``[Q, N]`` (what the loss sees).
        exclude: Candidates that must not be negatives ``[Q, N]`` (bool).
        hard_pool: How many top-ranked candidates to draw from.
        count: Negatives per query.
        generator: CPU random generator.

    Returns:
        ``[Q, min(count, hard_pool, N)]`` negative logits (``-inf`` where none is left).
    """
    score = score.masked_fill(exclude, float("-inf"))
    pool = min(hard_pool, score.shape[1])
    top, top_index = score.topk(pool, dim=1)
    allowed = torch.isfinite(top)
    # a random rank among the allowed ones; excluded ones sort last
    rank = rand_like_cpu(tuple(top.shape), top, generator).masked_fill(~allowed, -1.0)
    pick = rank.topk(min(count, pool), dim=1).indices
    chosen = top_index.gather(1, pick)
    out = logits.gather(1, chosen)
    return out.masked_fill(~allowed.gather(1, pick), float("-inf"))


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
        d = torch.cdist(part.float(), target.float())
        m = d.min(dim=1)
        dists.append(m.values)
        index.append(m.indices)
    if not dists:
        empty = source.new_zeros(0)
        return empty, empty.long()
    return torch.cat(dists), torch.cat(index)
