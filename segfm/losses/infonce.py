"""SAM's pixel-wise InfoNCE losses between two views whose voxels carry mm positions.

Both losses follow ``sam/models/frameworks/sam.py`` of the original (``single_fine_loss`` and
``coarse_loss``) with its published settings as defaults, and differ on purpose in three places:

- excluded negatives (too close to the query) are masked with ``-inf`` before ranking and in the
  softmax; the original multiplied their similarity by 0, so they stayed negatives (of logit 0)
  and could even be ranked as hard ones;
- only voxels inside the source volume (``valid``) are queries, keys or negatives;
- queries are voxels with an other-view voxel within the positive radius (the original first cut
  both views to the bounding box of their overlap, which selects the same voxels).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segfm.losses.sampling import hard_negatives, info_nce, nearest, random_subset


def _flat(x: Tensor) -> Tensor:
    """``[C, *S]`` to ``[prod(S), C]``."""
    return x.flatten(1).T


def _queries(
    pos_src: Tensor,
    valid_src: Tensor,
    pos_dst: Tensor,
    valid_dst: Tensor,
    radius: float,
    candidates: int,
    count: int,
    generator: torch.Generator | None,
) -> tuple[Tensor, Tensor]:
    """Voxels of one view with an other-view voxel within ``radius`` mm, and that nearest voxel.

    Returns:
        Indices ``[Q]`` into the source view and ``[Q]`` into the destination view.
    """
    src = random_subset(valid_src.nonzero()[:, 0], candidates, generator)
    dst = valid_dst.nonzero()[:, 0]
    if src.numel() == 0 or dst.numel() == 0:
        return src[:0], src[:0]
    dist, arg = nearest(pos_src[src], pos_dst[dst])
    keep = (dist < radius).nonzero()[:, 0]
    keep = random_subset(keep, count, generator)
    return src[keep], dst[arg[keep]]


class FineInfoNCELoss(nn.Module):
    """The local (fine) InfoNCE loss of one pair of views.

    Queries: up to ``num_queries`` voxels per direction (view 1 to 2 and 2 to 1) drawn among
    ``num_candidates`` random valid voxels that have an other-view voxel within ``pos_radius``
    mm, which is their positive. Negatives: voxels of both views farther than
    ``ignore_radius`` mm from the query; the ``hard_pool`` most similar by fine + coarse
    similarity are kept, and ``num_negatives`` of them drawn at random; their logits are the
    fine similarities. When no voxel has a positive (the views do not overlap), up to
    ``num_queries`` view-1 voxels are their own positives.

    Args:
        pos_radius: Positive distance in mm (2).
        ignore_radius: Exclusion radius of negatives around the query in mm (20).
        num_candidates: Random voxels per view examined for positives (2000).
        num_queries: Queries per direction (100).
        hard_pool: Hardest candidates kept per query (2000).
        num_negatives: Negatives drawn from them (500).
        temperature: Softmax temperature (0.5).
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
        self.pos_radius, self.ignore_radius = pos_radius, ignore_radius
        self.num_candidates, self.num_queries = num_candidates, num_queries
        self.hard_pool, self.num_negatives = hard_pool, num_negatives
        self.temperature = temperature

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
        n1 = f[0].shape[0]
        with torch.no_grad():
            q1, k1 = _queries(p[0], v[0], p[1], v[1], self.pos_radius, self.num_candidates,
                              self.num_queries, generator)  # fmt: skip
            q2, k2 = _queries(p[1], v[1], p[0], v[0], self.pos_radius, self.num_candidates,
                              self.num_queries, generator)  # fmt: skip
            query = torch.cat([q1, q2 + n1])
            key = torch.cat([k1 + n1, k2])
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
            exclude = (torch.cdist(points[query], points) < self.ignore_radius) | ~valids[None]
            exclude[torch.arange(query.numel(), device=query.device), key] = True
        negatives = hard_negatives(
            score, logits, exclude, self.hard_pool, self.num_negatives, generator
        )
        return info_nce(positive, negatives, self.temperature)


class CoarseInfoNCELoss(nn.Module):
    """The global (coarse) InfoNCE loss over a batch of view pairs.

    For each pair and direction, every valid coarse voxel whose nearest other-view voxel lies
    within ``pos_radius`` mm and within ``z_threshold`` mm along z is a query with that voxel as
    positive. Negatives: voxels of the pair farther than ``ignore_radius`` mm, the
    ``hard_pool`` most similar then ``num_negatives`` at random, plus ``num_global`` random
    voxels of the other pairs of the batch. A pair without any positive contrasts each voxel
    with itself. The loss is the mean over pairs.

    Args:
        pos_radius: Positive distance in mm (25).
        ignore_radius: Exclusion radius of local negatives in mm (5).
        z_threshold: Largest z offset of a positive, view 1 to 2 and 2 to 1 (the original
            hard-codes 8 mm for the first direction and uses its setting, 6 mm, for the second).
        hard_pool: Hardest local candidates kept per query (250).
        num_negatives: Local negatives drawn from them (200).
        num_global: Random negatives from the other pairs (1000; 300 in sam_deeplesion).
        temperature: Softmax temperature (0.5).
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
        self.pos_radius, self.ignore_radius = pos_radius, ignore_radius
        self.z_threshold = tuple(z_threshold)
        self.hard_pool, self.num_negatives, self.num_global = hard_pool, num_negatives, num_global
        self.temperature = temperature

    def _pairs_positives(self, p: list[Tensor], v: list[Tensor], n1: int) -> tuple[Tensor, Tensor]:
        queries, keys = [], []
        directions = (((0, 1), 0, n1, self.z_threshold[0]), ((1, 0), n1, 0, self.z_threshold[1]))
        for (a, b), offset_a, offset_b, z_max in directions:
            src, dst = v[a].nonzero()[:, 0], v[b].nonzero()[:, 0]
            if src.numel() == 0 or dst.numel() == 0:
                continue
            dist, arg = nearest(p[a][src], p[b][dst])
            key = dst[arg]
            dz = (p[a][src, 0] - p[b][key, 0]).abs()
            ok = (dist < self.pos_radius) & (dz < z_max)
            queries.append(src[ok] + offset_a)
            keys.append(key[ok] + offset_b)
        if not queries:
            empty = p[0].new_zeros(0, dtype=torch.long)
            return empty, empty
        return torch.cat(queries), torch.cat(keys)

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
        m = every.shape[1]
        losses = []
        for i in range(views // 2):
            f = [every[2 * i], every[2 * i + 1]]
            p = [_flat(positions[2 * i + j]).float() for j in range(2)]
            v = [valid[2 * i + j].flatten().bool() for j in range(2)]
            feats, points, valids = torch.cat(f), torch.cat(p), torch.cat(v)
            with torch.no_grad():
                query, key = self._pairs_positives(p, v, m)
                if query.numel() == 0:
                    query = valids.nonzero()[:, 0]
                    key = query
            if query.numel() == 0:
                continue
            q = feats[query]
            positive = (q * feats[key]).sum(-1)
            logits = q @ feats.T
            with torch.no_grad():
                exclude = (torch.cdist(points[query], points) < self.ignore_radius) | ~valids[None]
                exclude[torch.arange(query.numel(), device=query.device), key] = True
            negatives = [hard_negatives(logits.detach(), logits, exclude, self.hard_pool,
                                        self.num_negatives, generator)]  # fmt: skip
            others = (
                torch.cat([every[j] for j in range(views) if j // 2 != i]) if views > 2 else None
            )
            if others is not None and self.num_global > 0:
                pick = torch.randint(others.shape[0], (self.num_global,), generator=generator)
                negatives.append(q @ others[pick.to(others.device)].T)
            losses.append(info_nce(positive, torch.cat(negatives, dim=1), self.temperature))
        if not losses:
            return coarse.sum() * 0.0
        return torch.stack(losses).mean()
