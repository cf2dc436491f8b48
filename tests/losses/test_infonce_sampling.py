"""Statistics of the InfoNCE sampling over many draws against the original's rules.

The rules are those of ``sam/models/frameworks/sam.py`` of
alibaba-damo-academy/self-supervised-anatomical-embedding-v2 @035bbfc: queries (lines 212-284:
candidates inside the views' overlap box, ``pre_select_pos_number`` drawn, those with an
other-view voxel within ``positive_distance``, ``after_select_pos_number`` drawn, key = nearest),
hard negatives (lines 353-375 and 477-500: the ``pre_select_neg_number`` highest of similarity x
mask, ``after_select_neg_number`` drawn uniformly per query), coarse positives (lines 419-430:
within 25 mm and |dz| < 8 mm view 1 to 2, < ``coarse_z_thres`` view 2 to 1) and the global
negatives (lines 502-507: drawn without replacement from the other pairs, once per direction).
Expected values come from those rules (counting, the hypergeometric law), not from the code.
"""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from segfm.losses import CoarseInfoNCELoss, FineInfoNCELoss
from segfm.losses.sampling import hard_negatives

SHAPE = (8, 16, 16)  # fine grid (z, y, x), 2 mm
DRAWS = 200


def _grid(shift_x: float, shape: tuple[int, int, int] = SHAPE, step: float = 2.0) -> torch.Tensor:
    """Positions ``[N, 3]`` (z, y, x) in mm of a grid shifted by ``shift_x`` mm along x."""
    axes = [torch.arange(n, dtype=torch.float32) * step for n in shape]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    return grid + torch.tensor([0.0, 0.0, shift_x])


def _fine(queries: str) -> FineInfoNCELoss:
    return FineInfoNCELoss(
        num_candidates=300, num_queries=40, queries=queries, voxels="all", excluded="zeroed"
    )  # type: ignore[arg-type]


# view 2 starts 30 mm along x: view 1's last column (x = 30 mm) is view 2's first; the next
# columns are 2 mm apart, not within the (strict) 2 mm radius
P = [_grid(0.0), _grid(30.0)]
V = [torch.ones(len(P[0]), dtype=torch.bool), torch.ones(len(P[1]), dtype=torch.bool)]
ELIGIBLE = SHAPE[0] * SHAPE[1]  # one column of each view has a positive


def test_queries_are_within_the_radius_of_their_nearest_key() -> None:
    loss = _fine("overlap_box")
    n1 = len(P[0])
    every = torch.cat(P)
    for seed in range(20):
        query, key = loss.select_queries(P, V, torch.Generator().manual_seed(seed))
        assert len(query) == 2 * 40  # 128 eligible voxels per direction, 40 drawn
        dist = (every[query] - every[key]).norm(dim=1)
        assert (dist < 2.0).all()
        # the key is the nearest voxel of the other view (brute force)
        for q, k in zip(query.tolist(), key.tolist(), strict=True):
            other = P[1] if q < n1 else P[0]
            offset = n1 if q < n1 else 0
            assert k - offset == int((other - every[q]).norm(dim=1).argmin())


def test_overlap_box_queries_are_uniform_over_the_eligible_voxels() -> None:
    loss = _fine("overlap_box")
    counts = torch.zeros(len(P[0]))
    for seed in range(DRAWS):
        query, _ = loss.select_queries(P, V, torch.Generator().manual_seed(seed))
        counts += torch.bincount(query[query < len(P[0])], minlength=len(P[0]))
    eligible = P[0][:, 2] == 30.0
    assert counts[~eligible].sum() == 0  # no voxel without a positive is ever a query
    # each eligible voxel: Binomial(DRAWS, 40 / 128); a chi-square test of uniformity
    chi2 = stats.chisquare(counts[eligible].numpy())
    assert chi2.pvalue > 1e-3
    assert counts[eligible].mean() == pytest.approx(DRAWS * 40 / ELIGIBLE)


def test_query_counts_follow_each_rule() -> None:
    # overlap box (the original): every candidate lies in the 1-column overlap, so 40 queries;
    # segfm's "valid": 300 candidates among all 2048 voxels, of which X ~ Hypergeom(2048, 128,
    # 300) have a positive, so min(40, X) queries
    box = _fine("overlap_box")
    anywhere = _fine("valid")
    counts = {"box": [], "valid": []}
    for seed in range(DRAWS):
        g = torch.Generator().manual_seed(seed)
        counts["box"].append(int((box.select_queries(P, V, g)[0] < len(P[0])).sum()))
        counts["valid"].append(int((anywhere.select_queries(P, V, g)[0] < len(P[0])).sum()))
    assert set(counts["box"]) == {40}
    law = stats.hypergeom(len(P[0]), ELIGIBLE, 300)
    x = torch.arange(301, dtype=torch.float64)
    pmf, kept = torch.from_numpy(law.pmf(x.numpy())), x.clamp(max=40)
    expected = float((kept * pmf).sum())
    sd = math.sqrt(float(((kept - expected) ** 2 * pmf).sum()))
    mean = sum(counts["valid"]) / DRAWS
    assert abs(mean - expected) < 4 * sd / math.sqrt(DRAWS), (mean, expected)
    assert expected < 20  # the two rules really differ here


def _scores(n: int = 60) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One query: candidate ``i`` has logit ``i`` (its id); scores are a random order of them."""
    g = torch.Generator().manual_seed(0)
    logits = torch.arange(n, dtype=torch.float32)[None]
    score = torch.randn(1, n, generator=g)
    exclude = torch.zeros(1, n, dtype=torch.bool)
    exclude[0, :15] = True  # the 15 first are within the exclusion radius
    return score, logits, exclude


def test_dropped_negatives_are_uniform_among_the_hardest_allowed() -> None:
    score, logits, exclude = _scores()
    allowed = (~exclude[0]).nonzero()[:, 0]
    hardest = set(allowed[score[0, allowed].topk(20).indices].tolist())
    counts = torch.zeros(60)
    for seed in range(DRAWS):
        out = hard_negatives(score, logits, exclude, 20, 5, torch.Generator().manual_seed(seed))
        ids = out[0].long()
        assert len(set(ids.tolist())) == 5  # five different negatives
        counts[ids] += 1
    assert set(counts.nonzero()[:, 0].tolist()) == hardest
    chi2 = stats.chisquare(counts[sorted(hardest)].numpy())
    assert chi2.pvalue > 1e-3


@pytest.mark.parametrize("zero_logits", [False, True])
def test_zeroed_exclusions_are_drawn_as_the_original_does(zero_logits: bool) -> None:
    # similarity x mask: the 15 excluded rank at 0, above the 30 allowed candidates with a
    # negative score; a pool of 25 = 15 allowed positive scores + 10 of the excluded zeros
    score, logits, exclude = _scores()
    score = score.abs()
    score[0, 15:45] = -score[0, 15:45]  # 30 allowed with negative scores, 15 positive
    drawn_excluded, logit_ok = 0, True
    for seed in range(DRAWS):
        out = hard_negatives(score, logits, exclude, 25, 10, torch.Generator().manual_seed(seed),
                             excluded="zeroed", zero_logits=zero_logits)  # fmt: skip
        ids = out[0]
        allowed_ids = ids[ids >= 15]
        assert (score[0, allowed_ids.long()] > 0).all()  # never an easy (negative) candidate
        n_excl = 10 - len(allowed_ids)
        drawn_excluded += n_excl
        if zero_logits:  # the coarse loss: an excluded negative has logit 0
            logit_ok &= bool((ids[ids < 15] == 0).all()) and (ids == 0).sum() == n_excl
        else:  # the fine loss: its similarity
            logit_ok &= bool((ids[ids < 15] >= 0).all())
    assert logit_ok
    # each draw takes 10 of 25, 10 of which are excluded: hypergeometric mean 4
    law = stats.hypergeom(25, 10, 10)
    assert abs(drawn_excluded / DRAWS - law.mean()) < 4 * law.std() / math.sqrt(DRAWS)


def test_coarse_positives_use_the_original_z_thresholds() -> None:
    # view 2 is view 1 moved 7 mm along z: 7 < 8 mm (view 1 to 2) but not < 6 mm (2 to 1)
    shape = (1, 3, 3)
    p = [_grid(0.0, shape, 8.0), _grid(0.0, shape, 8.0) + torch.tensor([7.0, 0.0, 0.0])]
    v = [torch.ones(len(p[0]), dtype=torch.bool)] * 2
    loss = CoarseInfoNCELoss()
    query, key, first = loss.select_queries(p, v)
    n = len(p[0])
    assert first == n and len(query) == n  # every view-1 voxel, no view-2 voxel
    assert torch.equal(key, torch.arange(n) + n)  # nearest: the same index 7 mm away
    # one voxel each, 7 mm apart along z and 23.9 / 24.1 mm along x: 24.9 / 25.1 mm apart
    one = [torch.ones(1, dtype=torch.bool)] * 2
    near = [torch.zeros(1, 3), torch.tensor([[7.0, 0.0, 23.9]])]
    far = [torch.zeros(1, 3), torch.tensor([[7.0, 0.0, 24.1]])]
    assert loss.select_queries(near, one)[0].tolist() == [0]
    assert len(loss.select_queries(far, one)[0]) == 0


def test_global_negatives_come_without_replacement_from_the_other_pairs() -> None:
    # 3 pairs of 4 voxels; one-hot embeddings: a query of ones has logit 1 with every voxel,
    # a query weighted by voxel id reveals which voxel was drawn
    views, m = 6, 4
    every = torch.eye(views * m).reshape(views, m, views * m)
    valid = torch.ones(views, m, dtype=torch.bool)
    valid[5, 3] = False
    q = torch.arange(views * m, dtype=torch.float32)[None].repeat(3, 1)  # 2 then 1 queries
    loss = CoarseInfoNCELoss(num_global=5)
    counts = torch.zeros(views * m)
    for seed in range(DRAWS):
        out = loss._global(q, 2, every, valid, 0, torch.Generator().manual_seed(seed))
        ids = out.long()
        assert ids.shape == (3, 5)
        assert torch.equal(ids[0], ids[1])  # one draw per direction
        for row in (ids[0], ids[2]):
            assert len(set(row.tolist())) == 5  # without replacement
        counts += torch.bincount(ids[[0, 2]].flatten(), minlength=views * m)
    assert counts[: 2 * m].sum() == 0  # never the pair's own voxels
    assert counts[5 * m + 3] == 0  # nor a voxel outside its volume (voxels="valid")
    drawn = counts[2 * m :][valid[2:].flatten()]
    assert drawn.mean() == pytest.approx(2 * DRAWS * 5 / 15)
    assert stats.chisquare(drawn.numpy()).pvalue > 1e-3
