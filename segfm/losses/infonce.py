"""SAM's pixel-wise InfoNCE losses between two views whose voxels carry mm positions.

Both losses follow ``sam/models/frameworks/sam.py`` of the original (``single_fine_loss`` and
``coarse_loss``) with its published settings as defaults, and its random draws in its order.
Four rules differ from the original by default; each has a setting that gives the original's:

- ``excluded="dropped"``: negatives within the exclusion radius are masked with ``-inf`` before
  ranking and in the softmax; the original (``"zeroed"``) multiplied their ranking score by 0, so
  they could still be drawn as hard negatives, with their similarity as logit in the fine loss
  and 0 in the coarse loss;
- ``voxels="valid"``: only voxels inside the source volume are queries, keys or negatives; the
  original (``"all"``) used validity only to pick the fine loss's candidate queries;
- ``queries="valid"`` (fine loss): candidate queries are drawn among all valid voxels; the original
  (``"overlap_box"``) drew them inside the bounding box of both views' valid voxels, so more of
  them have a positive, and fell back to the nearest pairs (within 0.5 mm of the closest) when
  none had one;
- ``exclude_positive=True``: a query's own positive is never one of its negatives; the original
  (``False``) left it among the coarse loss's candidates when it lies beyond the 5 mm exclusion
  radius (positives reach 25 mm), so the same voxel was the positive and a negative.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segfm.losses.sampling import (
    Excluded,
    distances,
    hard_negatives,
    info_nce,
    nearest,
    random_subset,
    randperm,
)

Voxels = Literal["valid", "all"]
Queries = Literal["valid", "overlap_box"]


def _flat(x: Tensor) -> Tensor:
    """``[C, *S]`` to ``[prod(S), C]``."""
    return x.flatten(1).T


def _candidates(
    p_src: Tensor, v_src: Tensor, p_dst: Tensor, v_dst: Tensor, queries: Queries
) -> Tensor:
    """Indices of the source voxels that may be queries (raster order)."""
    if queries == "valid" or not v_src.any() or not v_dst.any():
        return v_src.nonzero()[:, 0]
    lo = torch.maximum(p_src[v_src].amin(0), p_dst[v_dst].amin(0))
    hi = torch.minimum(p_src[v_src].amax(0), p_dst[v_dst].amax(0))
    inside = ((p_src >= lo) & (p_src <= hi)).all(1) & v_src
    return inside.nonzero()[:, 0]


class FineInfoNCELoss(nn.Module):
    """The local (fine) InfoNCE loss of one pair of views.

    Queries: ``num_candidates`` random candidate voxels per view (see ``queries``); those with an
    other-view voxel within ``pos_radius`` mm, whose nearest such voxel is their positive, and up
    to ``num_queries`` of them drawn at random per direction (view 1 to 2 and 2 to 1).
    Negatives: voxels of both views farther than ``ignore_radius`` mm from the query (see
    ``excluded``); the ``hard_pool`` most similar by fine + coarse similarity are kept, and
    ``num_negatives`` of them drawn at random; their logits are the fine similarities. When no
    voxel has a positive (the views do not overlap), up to ``num_queries`` view-1 voxels are
    their own positives.

    Args:
        pos_radius: Positive distance in mm (2).
        ignore_radius: Exclusion radius of negatives around the query in mm (20).
        num_candidates: Random voxels per view examined for positives (2000).
        num_queries: Queries per direction (100).
        hard_pool: Hardest candidates kept per query (2000).
        num_negatives: Negatives drawn from them (500).
        temperature: Softmax temperature (0.5).
        excluded: ``dropped`` (never negatives) or ``zeroed`` (the original's product by 0).
        voxels: ``valid`` (queries, keys, negatives inside the volume) or ``all`` (the original).
        queries: Candidate queries among ``valid`` voxels or inside the ``overlap_box`` of both
            views (the original).
        exclude_positive: Never use the positive as a negative (the original: False).
    """

    def __init__(
        self,
        pos_radius: float = 2.0,
        ignore_radius: float = 20.0,
        num_candidates: int = 2000,
        num_queries: int = 100,
        hard_pool: int = 2000,
        num_negatives: int = 500,
        temperature: float = 0.5,
        excluded: Excluded = "dropped",
        voxels: Voxels = "valid",
        queries: Queries = "valid",
        exclude_positive: bool = True,
    ) -> None:
        super().__init__()
        values = {
            "pos_radius": pos_radius,
            "num_candidates": num_candidates,
            "num_queries": num_queries,
            "hard_pool": hard_pool,
            "num_negatives": num_negatives,
            "temperature": temperature,
        }
        for name, value in values.items():
            if value <= 0:
                msg = f"{name} must be > 0, got {value}"
                raise ValueError(msg)
        if ignore_radius < 0:
            msg = f"ignore_radius must be >= 0, got {ignore_radius}"
            raise ValueError(msg)
        _check_rules(excluded, voxels, queries)
        self.pos_radius, self.ignore_radius = pos_radius, ignore_radius
        self.num_candidates, self.num_queries = num_candidates, num_queries
        self.hard_pool, self.num_negatives = hard_pool, num_negatives
        self.temperature = temperature
        self.excluded, self.voxels, self.queries = excluded, voxels, queries
        self.exclude_positive = exclude_positive

    def select_queries(
        self, p: list[Tensor], v: list[Tensor], generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor]:
        """Queries and their positives, indices into both views concatenated.

        Draws, in the original's order: a permutation of each view's candidates (kept to
        ``num_candidates``), then a subset of each direction's queries if there are more than
        ``num_queries``.

        Args:
            p: Positions ``[N1, 3]`` and ``[N2, 3]`` (mm).
            v: Validity ``[N1]`` and ``[N2]`` (bool).
            generator: CPU random generator.

        Returns:
            Query and key indices ``[Q]`` (view-1 queries first).
        """
        cands = []
        for a, b in ((0, 1), (1, 0)):
            c = _candidates(p[a], v[a], p[b], v[b], self.queries)
            cands.append(c[randperm(c.numel(), generator, c.device)[: self.num_candidates]])
        found = []
        for (a, b), c in zip(((0, 1), (1, 0)), cands, strict=True):
            dst = (
                v[b].nonzero()[:, 0]
                if self.voxels == "valid"
                else torch.arange(v[b].numel(), device=c.device)
            )
            if c.numel() == 0 or dst.numel() == 0:
                found.append((c[:0], c[:0], c.new_zeros(0, dtype=torch.float)))
                continue
            dist, arg = nearest(p[a][c], p[b][dst])
            found.append((c, dst[arg], dist))
        keep = [(d < self.pos_radius).nonzero()[:, 0] for _, _, d in found]
        if self.queries == "overlap_box" and keep[0].numel() == 0 and found[0][2].numel():
            # the original's fall-back: the pairs within 0.5 mm of the closest one
            keep = [(d < d.min() + 0.5).nonzero()[:, 0] if d.numel() else k
                    for (_, _, d), k in zip(found, keep, strict=True)]  # fmt: skip
        keep = [random_subset(k, self.num_queries, generator) for k in keep]
        n1 = v[0].numel()
        (c1, k1, _), (c2, k2, _) = found
        query = torch.cat([c1[keep[0]], c2[keep[1]] + n1])
        key = torch.cat([k1[keep[0]] + n1, k2[keep[1]]])
        return query, key

    def forward(
        self,
        fine: tuple[Tensor, Tensor],
        coarse: tuple[Tensor, Tensor],
        positions: tuple[Tensor, Tensor],
        valid: tuple[Tensor, Tensor],
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """The loss of one pair.

        Args:
            fine: Fine embeddings of view 1 and 2, each ``[E, d, h, w]`` (unit norm).
            coarse: Coarse embeddings, each ``[E, d', h', w']``; upsampled (trilinear) to the
                fine grid and renormalised for ranking negatives.
            positions: Millimetre positions ``(z, y, x)`` of the fine voxels, each
                ``[3, d, h, w]``, in one frame for both views.
            valid: Fine voxels inside the source volume, each ``[d, h, w]`` (bool).
            generator: CPU random generator.

        Returns:
            The mean loss over the queries (0-d).
        """
        f = [_flat(x) for x in fine]
        c = [
            _flat(
                F.normalize(
                    F.interpolate(y[None].float(), size=x.shape[1:], mode="trilinear"), dim=1
                )[0]
            )
            for x, y in zip(fine, coarse, strict=True)
        ]
        p = [_flat(x).float() for x in positions]
        v = [x.flatten().bool() for x in valid]
        with torch.no_grad():
            query, key = self.select_queries(p, v, generator)
            if query.numel() == 0:  # no overlap: each point is its own positive
                query = random_subset(v[0].nonzero()[:, 0], self.num_queries, generator)
                key = query
        feats, coarses = torch.cat(f), torch.cat(c)
        points, valids = torch.cat(p), torch.cat(v)
        if query.numel() == 0:
            return feats.sum() * 0.0
        q = feats[query]
        positive = (q * feats[key]).sum(-1)
        logits = q @ feats.T
        with torch.no_grad():
            score = logits + coarses[query] @ coarses.T
            exclude = distances(points[query], points) < self.ignore_radius
            if self.exclude_positive:
                exclude[torch.arange(query.numel(), device=query.device), key] = True
        negatives = hard_negatives(
            score, logits, exclude, self.hard_pool, self.num_negatives, generator,
            excluded=self.excluded, unused=~valids if self.voxels == "valid" else None,
        )  # fmt: skip
        return info_nce(positive, negatives, self.temperature)


def _check_rules(excluded: str, voxels: str, queries: str = "valid") -> None:
    """Raise ``ValueError`` naming an unknown rule."""
    for name, value, allowed in (
        ("excluded", excluded, ("dropped", "zeroed")),
        ("voxels", voxels, ("valid", "all")),
        ("queries", queries, ("valid", "overlap_box")),
    ):
        if value not in allowed:
            msg = f"{name} must be one of {allowed}, got {value!r}"
            raise ValueError(msg)


class CoarseInfoNCELoss(nn.Module):
    """The global (coarse) InfoNCE loss over a batch of view pairs.

    For each pair and direction, every coarse voxel whose nearest other-view voxel lies within
    ``pos_radius`` mm and within ``z_threshold`` mm along z is a query with that voxel as
    positive. Negatives: voxels of the pair farther than ``ignore_radius`` mm, the ``hard_pool``
    most similar then ``num_negatives`` at random, plus ``num_global`` voxels of the other pairs
    of the batch, drawn without replacement once per direction. A pair without any positive
    contrasts each voxel with itself. The loss is the mean over pairs. ``excluded``, ``voxels``
    and ``exclude_positive`` as in :class:`FineInfoNCELoss`.

    Args:
        pos_radius: Positive distance in mm (25).
        ignore_radius: Exclusion radius of local negatives in mm (5).
        z_threshold: Largest z offset of a positive, view 1 to 2 and 2 to 1 (the original
            hard-codes 8 mm for the first direction and uses its setting, 6 mm, for the second).
        hard_pool: Hardest local candidates kept per query (250).
        num_negatives: Local negatives drawn from them (200).
        num_global: Random negatives from the other pairs (1000; 300 in sam_deeplesion).
        temperature: Softmax temperature (0.5).
        excluded: ``dropped`` or ``zeroed`` (the original).
        voxels: ``valid`` or ``all`` (the original).
        exclude_positive: Never use the positive as a negative (the original: False).
    """

    def __init__(
        self,
        pos_radius: float = 25.0,
        ignore_radius: float = 5.0,
        z_threshold: tuple[float, float] = (8.0, 6.0),
        hard_pool: int = 250,
        num_negatives: int = 200,
        num_global: int = 1000,
        temperature: float = 0.5,
        excluded: Excluded = "dropped",
        voxels: Voxels = "valid",
        exclude_positive: bool = True,
    ) -> None:
        super().__init__()
        if pos_radius <= 0 or temperature <= 0 or hard_pool < 1 or num_negatives < 1:
            msg = (
                f"pos_radius, temperature, hard_pool and num_negatives must be > 0, got "
                f"{pos_radius}, {temperature}, {hard_pool}, {num_negatives}"
            )
            raise ValueError(msg)
        if ignore_radius < 0 or num_global < 0 or min(z_threshold) <= 0:
            msg = (
                f"ignore_radius and num_global must be >= 0 and z_threshold > 0, got "
                f"{ignore_radius}, {num_global}, {z_threshold}"
            )
            raise ValueError(msg)
        _check_rules(excluded, voxels)
        self.pos_radius, self.ignore_radius = pos_radius, ignore_radius
        self.z_threshold = tuple(z_threshold)
        self.hard_pool, self.num_negatives, self.num_global = hard_pool, num_negatives, num_global
        self.temperature = temperature
        self.excluded, self.voxels = excluded, voxels
        self.exclude_positive = exclude_positive

    def select_queries(self, p: list[Tensor], v: list[Tensor]) -> tuple[Tensor, Tensor, int]:
        """Queries and positives of one pair (indices into both views), and the view-1 count."""
        queries, keys = [], []
        n1 = p[0].shape[0]
        directions = (((0, 1), 0, n1, self.z_threshold[0]), ((1, 0), n1, 0, self.z_threshold[1]))
        for (a, b), offset_a, offset_b, z_max in directions:
            if self.voxels == "valid":
                src, dst = v[a].nonzero()[:, 0], v[b].nonzero()[:, 0]
            else:
                src, dst = (torch.arange(x.numel(), device=x.device) for x in (v[a], v[b]))
            if src.numel() == 0 or dst.numel() == 0:
                queries.append(src[:0])
                keys.append(src[:0])
                continue
            dist, arg = nearest(p[a][src], p[b][dst])
            key = dst[arg]
            dz = (p[a][src, 0] - p[b][key, 0]).abs()
            ok = (dist < self.pos_radius) & (dz < z_max)
            queries.append(src[ok] + offset_a)
            keys.append(key[ok] + offset_b)
        return torch.cat(queries), torch.cat(keys), queries[0].numel()

    def forward(
        self,
        coarse: Tensor,
        positions: Tensor,
        valid: Tensor,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """The loss of a batch of pairs (views ``2i`` and ``2i + 1`` form pair ``i``).

        Args:
            coarse: Coarse embeddings ``[2P, E, d, h, w]`` (unit norm).
            positions: Millimetre positions ``(z, y, x)`` of the coarse voxels ``[2P, 3, d, h, w]``.
            valid: Coarse voxels inside the source volume ``[2P, d, h, w]`` (bool).
            generator: CPU random generator.

        Returns:
            The mean loss over the pairs (0-d).
        """
        views = coarse.shape[0]
        if views < 2 or views % 2:
            msg = f"the coarse loss needs pairs of views, got {views} views"
            raise ValueError(msg)
        every = coarse.flatten(2).transpose(1, 2)  # [2P, M, E]
        flat_valid = valid.flatten(1).bool()  # [2P, M]
        losses = []
        for i in range(views // 2):
            f = [every[2 * i], every[2 * i + 1]]
            p = [_flat(positions[2 * i + j]).float() for j in range(2)]
            v = [flat_valid[2 * i + j] for j in range(2)]
            feats, points, valids = torch.cat(f), torch.cat(p), torch.cat(v)
            with torch.no_grad():
                query, key, first = self.select_queries(p, v)
                if query.numel() == 0:
                    query = valids.nonzero()[:, 0]
                    key, first = query, query.numel()
            if query.numel() == 0:
                continue
            q = feats[query]
            positive = (q * feats[key]).sum(-1)
            logits = q @ feats.T
            with torch.no_grad():
                exclude = distances(points[query], points) < self.ignore_radius
                if self.exclude_positive:
                    exclude[torch.arange(query.numel(), device=query.device), key] = True
            negatives = hard_negatives(
                logits.detach(), logits, exclude, self.hard_pool, self.num_negatives, generator,
                excluded=self.excluded, unused=~valids if self.voxels == "valid" else None,
                zero_logits=True,
            )  # fmt: skip
            negatives = torch.cat([negatives, self._global(q, first, every, flat_valid, i,
                                                           generator)], dim=1)  # fmt: skip
            losses.append(info_nce(positive, negatives, self.temperature))
        if not losses:
            return coarse.sum() * 0.0
        return torch.stack(losses).mean()

    def _global(
        self,
        q: Tensor,
        first: int,
        every: Tensor,
        valid: Tensor,
        pair: int,
        generator: torch.Generator | None,
    ) -> Tensor:
        """Logits ``[Q, G]`` of ``num_global`` voxels of the other pairs, drawn per direction."""
        others = torch.cat([every[: 2 * pair], every[2 * pair + 2 :]]).flatten(0, 1)
        if self.voxels == "valid":
            others = others[torch.cat([valid[: 2 * pair], valid[2 * pair + 2 :]]).flatten()]
        if others.shape[0] == 0 or self.num_global == 0:
            return q.new_zeros(q.shape[0], 0)
        parts = []
        for rows in (q[:first], q[first:]):
            pick = randperm(others.shape[0], generator, q.device)[: self.num_global]
            parts.append(rows @ others[pick].T)
        return torch.cat(parts)
