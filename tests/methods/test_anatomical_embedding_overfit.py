"""A tiny SAM overfits one generated pair: its landmarks match to within one voxel.

One CT-like volume (``data_tools.synthetic_embedding.make_volume``: a smooth field, three
organs and a texture repeated every 12 mm, so that local appearance alone is ambiguous), two
views of 8x32x32 voxels at 2 mm, view 2 moved by (4, 6, 10) voxels. Landmarks: every fine node
(stride 2) of view 1 whose position is also a fine node of view 2; each is matched to the view-2
node of highest fine cosine similarity, and the landmark error is the mean distance in mm to the
true position. (The coarse head, stride 4x16x16, has 2x2x2 nodes on such views, too few to
help.) segfm's loss with its shipped rules and the published radii (2 mm positives, 20 mm
exclusion) must bring the error below one voxel (2 mm) within ``MAX_STEPS`` steps; the same
run with the positives moved to the wrong voxels must not.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

from data_tools.synthetic_embedding import make_volume
from segfm.losses import FineInfoNCELoss
from segfm.methods.anatomical_embedding import (
    FINE_STRIDE,
    AnatomicalEmbedding,
    CoarseOptions,
    FineOptions,
    _pool,
)

VIEW, SHIFT, SPACING = (8, 32, 32), (4, 6, 10), 2.0
MAX_STEPS, EVERY = 60, 5


def _pair() -> dict[str, torch.Tensor]:
    shape = tuple(n + s for n, s in zip(VIEW, SHIFT, strict=True))
    image, _ = make_volume(np.random.default_rng(0), shape, texture_period=6)
    volume = torch.from_numpy(image / 300.0)
    axes = [torch.arange(n, dtype=torch.float32) * SPACING for n in shape]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"))

    def crop(x: torch.Tensor, at: tuple[int, int, int]) -> torch.Tensor:
        return x[..., at[0] : at[0] + VIEW[0], at[1] : at[1] + VIEW[1], at[2] : at[2] + VIEW[2]]

    ones = torch.ones(1, 1, *VIEW, dtype=torch.bool)
    return {
        "view1": crop(volume, (0, 0, 0))[None, None], "view2": crop(volume, SHIFT)[None, None],
        "position1": crop(grid, (0, 0, 0))[None], "position2": crop(grid, SHIFT)[None],
        "valid1": ones, "valid2": ones,
    }  # fmt: skip


def landmark_error(task: AnatomicalEmbedding, pair: dict[str, torch.Tensor]) -> float:
    """Mean error (mm) of fine nearest-neighbour matching of the shared fine nodes."""
    p1, p2 = (_pool(pair[f"position{v}"], FINE_STRIDE)[0].flatten(1).T for v in (1, 2))
    shared = torch.cdist(p1, p2).min(dim=1).values < 1e-3
    with torch.no_grad():
        fine = task.model(torch.cat([pair["view1"], pair["view2"]]))["fine"]
    f1, f2 = fine[0].flatten(1).T, fine[1].flatten(1).T
    found = p2[(f1[shared] @ f2.T).argmax(dim=1)]
    return float((found - p1[shared]).norm(dim=1).mean())


def _overfit(pair: dict[str, torch.Tensor]) -> list[tuple[int, float]]:
    """Train until the landmark error is below one voxel; (step, error) every ``EVERY`` steps."""
    torch.manual_seed(0)
    fine = FineOptions(num_candidates=500, num_queries=100, hard_pool=300, num_negatives=100)
    task = AnatomicalEmbedding(arch="tiny", fine=fine, coarse=CoarseOptions(num_global=0))
    task.train()
    opt = torch.optim.Adam(task.model.parameters(), lr=3e-3)
    draws = torch.Generator().manual_seed(0)
    history = []
    for step in range(MAX_STEPS + 1):
        if step % EVERY == 0:
            history.append((step, landmark_error(task, pair)))
            if history[-1][1] < SPACING or step == MAX_STEPS:
                break
        opt.zero_grad()
        task.sam_loss(pair, draws)["loss"].backward()
        opt.step()
    return history


def test_a_tiny_network_overfits_one_pair() -> None:
    history = _overfit(_pair())
    assert history[0][1] > 5 * SPACING  # untrained: far off
    assert history[-1][1] < SPACING, history


def _wrong_positives(select: Callable) -> Callable:
    def select_wrong(self: FineInfoNCELoss, *args: object) -> tuple[torch.Tensor, torch.Tensor]:
        query, key = select(self, *args)
        return query, key.roll(1)  # each query gets another query's positive

    return select_wrong


def test_a_broken_loss_does_not(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        FineInfoNCELoss, "select_queries", _wrong_positives(FineInfoNCELoss.select_queries)
    )
    history = _overfit(_pair())
    assert history[-1][0] == MAX_STEPS
    assert min(err for _, err in history) > SPACING, history
