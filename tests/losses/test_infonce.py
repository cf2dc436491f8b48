"""The InfoNCE losses on tiny hand-built views whose right answers are known."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from segfm.losses import CoarseInfoNCELoss, FineInfoNCELoss

SHAPE = (2, 3, 4)  # fine grid (z, y, x)
E = 8


def _grid(offset_mm: tuple[float, float, float], step: float = 4.0) -> torch.Tensor:
    """Positions [3, *SHAPE] in mm of a grid ``step`` mm apart starting at ``offset_mm``."""
    axes = [
        torch.arange(n, dtype=torch.float32) * step + o
        for n, o in zip(SHAPE, offset_mm, strict=True)
    ]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"))


def _unit(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(E, n, generator=g), dim=0)


def _views(shift_x_voxels: int = 1, shift_zy: tuple[int, int] = (0, 0)) -> tuple:
    """View 2 is view 1 shifted by whole voxels; embeddings follow the anatomy."""
    p1 = _grid((0.0, 0.0, 0.0))
    p2 = _grid((4.0 * shift_zy[0], 4.0 * shift_zy[1], 4.0 * shift_x_voxels))
    # one random embedding per anatomical point: the same point has the same embedding
    table = _unit(97, 0)

    def embed(p: torch.Tensor) -> torch.Tensor:
        idx = (p[2] / 4).long() + (p[0] / 4).long() * 7 + (p[1] / 4).long() * 23
        return table[:, idx.flatten() % table.shape[1]].reshape(E, *SHAPE)

    f1, f2 = embed(p1), embed(p2)
    coarse = F.normalize(torch.ones(E, 1, 1, 1), dim=0)
    valid = torch.ones(SHAPE, dtype=torch.bool)
    return (f1, f2), (coarse, coarse), (p1, p2), (valid, valid)


def _loss(**kw: float) -> FineInfoNCELoss:
    base = {"pos_radius": 1.0, "ignore_radius": 1.0, "num_candidates": 100, "num_queries": 100,
            "hard_pool": 100, "num_negatives": 100, "temperature": 0.5}  # fmt: skip
    return FineInfoNCELoss(**(base | kw))  # type: ignore[arg-type]


def test_known_positive_beats_a_wrong_one() -> None:
    fine, coarse, pos, valid = _views()
    good = _loss()(fine, coarse, pos, valid, torch.Generator().manual_seed(0))
    perm = torch.randperm(math.prod(SHAPE), generator=torch.Generator().manual_seed(1))
    wrong = fine[1].flatten(1)[:, perm].reshape(fine[1].shape)
    bad = _loss()((fine[0], wrong), coarse, pos, valid, torch.Generator().manual_seed(0))
    assert good < bad


def test_single_query_matches_the_definition_and_temperature() -> None:
    # the views share exactly one point: view 2's first x column is view 1's last one
    fine, coarse, pos, valid = _views(shift_x_voxels=SHAPE[2] - 1)
    f = torch.cat([fine[0].flatten(1), fine[1].flatten(1)], 1).T  # [N, E]
    p = torch.cat([pos[0].flatten(1), pos[1].flatten(1)], 1).T
    n1 = math.prod(SHAPE)
    for tau in (0.5, 0.1):
        loss = _loss(temperature=tau)(fine, coarse, pos, valid, torch.Generator().manual_seed(0))
        expected = []
        # queries: voxels of view 1 at the shared x and their twins in view 2 (both directions)
        shared = (p[:n1, 2] == 4.0 * (SHAPE[2] - 1)).nonzero()[:, 0]
        for q in shared.tolist():
            key = int(((p[n1:] - p[q]).norm(dim=1) < 1e-6).nonzero()[0]) + n1
            for a, b in ((q, key), (key, q)):
                negatives = (p - p[a]).norm(dim=1) >= 1.0  # everything 1 mm away or more
                logits = torch.cat([(f[a] @ f[b]).view(1), f[negatives] @ f[a]]) / tau
                expected.append(-torch.log_softmax(logits, 0)[0])
        assert torch.allclose(loss, torch.stack(expected).mean(), atol=1e-5)


def test_negatives_within_the_ignore_radius_are_excluded() -> None:
    # the views share one point only, P = (4, 8, 12) mm: view 1's last voxel, view 2's first
    fine, coarse, pos, valid = _views(shift_x_voxels=SHAPE[2] - 1, shift_zy=(1, 2))
    loss_fn = _loss(ignore_radius=5.0)
    base = loss_fn(fine, coarse, pos, valid, torch.Generator().manual_seed(0))
    at = lambda z, y, x: (pos[0][0] == z) & (pos[0][1] == y) & (pos[0][2] == x)  # noqa: E731
    changed = fine[0].clone()
    changed[:, at(4.0, 8.0, 8.0)] = fine[0][:, at(4.0, 8.0, 12.0)]  # 4 mm from P: excluded
    same = loss_fn((changed, fine[1]), coarse, pos, valid, torch.Generator().manual_seed(0))
    assert torch.allclose(base, same)
    changed = fine[0].clone()
    changed[:, at(0.0, 0.0, 0.0)] = fine[0][:, at(4.0, 8.0, 12.0)]  # far from P: a negative
    other = loss_fn((changed, fine[1]), coarse, pos, valid, torch.Generator().manual_seed(0))
    assert other > base  # a look-alike outside the radius is a hard negative


def test_all_excluded_means_no_negative_mass() -> None:
    # masking with -inf: when every candidate is excluded, only the positive is left (loss 0);
    # multiplying similarities by 0 would keep them as negatives of logit 0
    fine, coarse, pos, valid = _views()
    loss = _loss(ignore_radius=1e4)(fine, coarse, pos, valid)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)


def test_views_without_overlap_use_each_point_as_its_own_positive() -> None:
    fine, coarse, pos, valid = _views()
    far = (pos[0], pos[1] + 1000.0)
    loss = _loss(ignore_radius=0.5)(fine, coarse, far, valid)
    f = fine[0].flatten(1).T
    # each point of view 1 against every other point (both views) at temperature 0.5
    everything = torch.cat([f, fine[1].flatten(1).T])
    logits = f @ everything.T
    own = torch.arange(f.shape[0])
    logits[own, own] = float("-inf")
    expected = -torch.log_softmax(torch.cat([torch.ones(f.shape[0], 1), logits], 1) / 0.5, 1)[:, 0]
    assert torch.allclose(loss, expected.mean(), atol=1e-5)


def test_coarse_loss_prefers_matching_embeddings_and_uses_other_pairs() -> None:
    fine, _, pos, valid = _views()
    loss_fn = CoarseInfoNCELoss(pos_radius=1.0, ignore_radius=1.0, z_threshold=(1.0, 1.0),
                                hard_pool=50, num_negatives=50, num_global=10)  # fmt: skip
    coarse = torch.stack([fine[0], fine[1], fine[0], fine[1]])
    positions = torch.stack([pos[0], pos[1], pos[0], pos[1]])
    valids = torch.stack([valid[0], valid[1], valid[0], valid[1]])
    good = loss_fn(coarse, positions, valids, torch.Generator().manual_seed(0))
    shuffled = coarse.clone()
    shuffled[1] = coarse[1].flatten(1)[:, torch.randperm(24)].reshape(coarse[1].shape)
    shuffled[3] = shuffled[1]
    bad = loss_fn(shuffled, positions, valids, torch.Generator().manual_seed(0))
    assert good < bad
    # the global negatives come from the other pair: making them look like the queries hurts
    other = coarse.clone()
    other[2:] = coarse[:2]
    assert torch.allclose(loss_fn(other, positions, valids, torch.Generator().manual_seed(0)), good)
    no_global = CoarseInfoNCELoss(1.0, 1.0, (1.0, 1.0), 50, 50, num_global=0)
    assert not torch.allclose(
        no_global(coarse, positions, valids, torch.Generator().manual_seed(0)), good
    )


@pytest.mark.parametrize(
    "kwargs", [{"temperature": 0.0}, {"pos_radius": -1.0}, {"num_negatives": 0}]
)
def test_bad_arguments(kwargs: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        FineInfoNCELoss(**kwargs)
