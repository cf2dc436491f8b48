"""The anatomical embedding method: schedule, stage checks, matching errors."""

from __future__ import annotations

import pytest
import torch

from segfm.methods.anatomical_embedding import (
    AnatomicalEmbedding,
    CoarseOptions,
    FineOptions,
    SemanticOptions,
    Warmup,
)


def test_warmup_then_constant() -> None:
    task = AnatomicalEmbedding(arch="tiny", lr=0.02, warmup=Warmup(iters=10, ratio=0.001))
    conf = task.configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["momentum"] == 0.9
    rates = []
    for _ in range(15):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert rates[0] == pytest.approx(0.02 * 0.001)
    assert rates[5] == pytest.approx(0.02 * (1 - 0.5 * 0.999))
    assert rates[10:] == pytest.approx([0.02] * 5)


def test_stage_checks() -> None:
    with pytest.raises(ValueError, match="semantic head"):
        AnatomicalEmbedding(stage="sam_pp", arch="tiny")
    with pytest.raises(ValueError, match="stage"):
        AnatomicalEmbedding(stage="sam3")  # type: ignore[arg-type]
    assert AnatomicalEmbedding(stage="sam_pp", arch="tiny_pp").model.has_semantic
    with pytest.raises(ValueError, match=r"semantic\.prob"):
        SemanticOptions(prob=1.5)
    with pytest.raises(ValueError, match="warmup"):
        Warmup(ratio=0.0)
    with pytest.raises(ValueError, match="momentum"):
        AnatomicalEmbedding(arch="tiny", momentum=1.0)


def test_options_reach_the_losses() -> None:
    fine = FineOptions(pos_radius=3.0, num_candidates=123, num_negatives=7)
    coarse = CoarseOptions(z_threshold=(4.0, 2.0), num_global=9)
    task = AnatomicalEmbedding(arch="tiny", fine=fine, coarse=coarse, temperature=0.2)
    got = task.fine_loss
    assert (got.pos_radius, got.num_candidates, got.num_negatives) == (3.0, 123, 7)
    assert (got.ignore_radius, got.temperature) == (20.0, 0.2)  # a default, the shared value
    got = task.coarse_loss
    assert (got.z_threshold, got.num_global, got.temperature) == ((4.0, 2.0), 9, 0.2)
    assert task.hparams["coarse"]["num_global"] == 9  # plain data in the checkpoint


def _pair_batch(shift_mm: float) -> dict:
    """One pair: view 2 is view 1 shifted along x by ``shift_mm`` (positions say so)."""
    g = torch.Generator().manual_seed(0)
    image = torch.randn(1, 1, 16, 32, 64, generator=g)
    axes = [torch.arange(n) * 2.0 for n in (16, 32, 64)]
    pos = torch.stack(torch.meshgrid(*axes, indexing="ij"))[None]
    k = int(shift_mm / 2)
    return {
        "view1": image[..., :32], "view2": image[..., k : k + 32],
        "position1": pos[..., :32], "position2": pos[..., k : k + 32],
        "valid1": torch.ones(1, 1, 16, 32, 32, dtype=torch.bool),
        "valid2": torch.ones(1, 1, 16, 32, 32, dtype=torch.bool),
    }  # fmt: skip


def test_identity_error_is_the_shift() -> None:
    task = AnatomicalEmbedding(arch="tiny").eval()
    with torch.no_grad():
        found, same = task.match_errors(_pair_batch(8.0))
    assert found.shape == same.shape and found.shape[0] > 0
    assert torch.allclose(same[:, 2], torch.full_like(same[:, 2], 8.0))
    assert torch.allclose(same[:, :2], torch.zeros_like(same[:, :2]))


def test_sam_loss_backpropagates() -> None:
    fine = FineOptions(num_candidates=200, num_queries=20, hard_pool=100, num_negatives=20)
    task = AnatomicalEmbedding(arch="tiny", fine=fine, coarse=CoarseOptions(num_global=0))
    batch = _pair_batch(8.0)
    parts = task.sam_loss(batch)
    parts["loss"].backward()
    assert torch.isfinite(parts["loss"]) and parts["fine_loss"] > 0
    assert task.model.backbone.conv1.conv.weight.grad is not None
