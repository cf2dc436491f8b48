"""segfm's SAM training step against the original's, on one batch with equal weights and draws.

The reference is ``benchmarks/reference/train_anatomical_embedding.py``, which follows
``sam/models/frameworks/sam.py`` of alibaba-damo-academy/self-supervised-anatomical-embedding-v2
@035bbfc statement by statement: ``Sam.loss`` (lines 107-141), ``single_fine_loss`` (143-387)
and ``coarse_loss`` (389-565), with the network of ``benchmarks/reference/anatomical_embedding.py``
(``Sam.extract_feat``, lines 59-68). Both get the same weights (segfm's tiny network's state dict,
which uses the official key names) and the same random draws (one seeded generator each, drawn
in the original's order). segfm runs with the original's sampling rules
(``LossRules(excluded="zeroed", voxels="all", queries="overlap_box", exclude_positive=False)``);
its default rules are shown to give another loss, so the comparison can fail.

SAM++'s semantic step is compared with ``sam_pp_semantic_loss`` of the same reference
(``sam_v2_uniform_cross_volume_mask_dual_head_mean_vector.py`` lines 95-195 and 663-673,
``supconloss.py`` lines 328-385), and its frequency with the original's ``p < 0.4`` rule.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from benchmarks.reference.anatomical_embedding import build_sam
from benchmarks.reference.train_anatomical_embedding import sam_loss, sam_pp_semantic_loss
from segfm.methods.anatomical_embedding import (
    AnatomicalEmbedding,
    CoarseOptions,
    FineOptions,
    LossRules,
)

ORIGINAL = LossRules(excluded="zeroed", voxels="all", queries="overlap_box", exclude_positive=False)
SHAPE = (16, 32, 32)  # view (z, y, x): fine grid 8x16x16, coarse 4x2x2
# sam_NIHLN.py's train_cfg scaled to the tiny views (topk needs that many candidates)
CFG = SimpleNamespace(
    pre_select_pos_number=300, after_select_pos_number=40, pre_select_neg_number=400,
    after_select_neg_number=100, positive_distance=2.0, ignore_distance=20.0,
    coarse_positive_distance=25.0, coarse_ignore_distance=5.0, coarse_z_thres=6.0,
    coarse_pre_select_neg_number=20, coarse_after_select_neg_number=10,
    coarse_global_select_number=12, temperature=0.5,
)  # fmt: skip
FINE = FineOptions(2.0, 20.0, 300, 40, 400, 100)
COARSE = CoarseOptions(25.0, 5.0, (8.0, 6.0), 20, 10, 12)
GROUPS = ("backbone.", "neck.", "read_out_head.", "semantic_head.")


def _positions(spacing: float, origin: tuple[float, float, float], angle: float) -> torch.Tensor:
    """Millimetre positions ``[3, *SHAPE]`` (z, y, x) of a grid rotated about z by ``angle``."""
    axes = [torch.arange(n, dtype=torch.float64) for n in SHAPE]
    idx = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1) * spacing
    c, s = math.cos(angle), math.sin(angle)
    rot = torch.tensor([[1, 0, 0], [0, c, -s], [0, s, c]], dtype=torch.float64)
    return (idx @ rot.T + torch.tensor(origin, dtype=torch.float64)).permute(3, 0, 1, 2).float()


def _batch(seed: int) -> dict[str, torch.Tensor]:
    """Two overlapping pairs at other scales, shifts and rotations; a part of one view invalid."""
    g = torch.Generator().manual_seed(seed)
    views = [
        ((2.1, (0.0, 0.0, 0.0), 0.0), (1.9, (5.3, 7.1, 9.7), 0.05)),
        ((2.3, (3.0, 1.0, 2.0), 0.02), (2.05, (-9.1, 11.3, -6.2), -0.04)),
    ]
    b: dict[str, list[torch.Tensor]] = {}
    for pair in views:
        for v, (spacing, origin, angle) in enumerate(pair, 1):
            b.setdefault(f"view{v}", []).append(torch.randn(1, *SHAPE, generator=g))
            b.setdefault(f"position{v}", []).append(_positions(spacing, origin, angle))
            b.setdefault(f"valid{v}", []).append(torch.ones(1, *SHAPE, dtype=torch.bool))
    # the volume's border cuts one view mid-block (x >= 13, z >= 11; blocks are 2 and 4x16x16)
    b["valid2"][1][:, :, :, 13:] = False
    b["valid1"][1][:, 11:] = False
    return {k: torch.stack(x) for k, x in b.items()}


def _reference(task: AnatomicalEmbedding, batch: dict, seed: int) -> tuple[float, dict]:
    ref = build_sam(base_channels=4, out_channels=16, half_outputs=False)
    ref.load_state_dict(task.model.state_dict(), strict=True)
    ref.train()
    x = torch.stack([batch["view1"], batch["view2"]], 1).flatten(0, 1)
    pos = torch.stack([batch["position1"], batch["position2"]], 1).flatten(0, 1)[:, [1, 2, 0]]
    valid = torch.stack([batch["valid1"], batch["valid2"]], 1).flatten(0, 1).float()
    out = sam_loss(ref(x), pos, valid, CFG, torch.Generator().manual_seed(seed))
    out["loss"].backward()
    return out, _grad_norms(ref)


def _grad_norms(net: torch.nn.Module) -> dict[str, float]:
    grads = {g: [] for g in GROUPS}
    for name, p in net.named_parameters():
        if p.grad is None:  # a head the loss does not use
            continue
        grads[next(g for g in GROUPS if name.startswith(g))].append(p.grad.flatten())
    return {g: float(torch.cat(v).norm()) if v else 0.0 for g, v in grads.items()}


def _segfm(rules: LossRules, batch: dict, seed: int) -> tuple[dict, dict, AnatomicalEmbedding]:
    torch.manual_seed(0)
    task = AnatomicalEmbedding(arch="tiny", fine=FINE, coarse=COARSE, rules=rules).train()
    parts = task.sam_loss(batch, torch.Generator().manual_seed(seed))
    parts["loss"].backward()
    return parts, _grad_norms(task.model), task


def _same(parts: dict, norms: dict, ref: dict, ref_norms: dict) -> bool:
    """Losses and per-group gradient norms equal within 1e-5 (relative, and absolute)."""
    return all(
        math.isclose(float(parts[k].detach()), float(ref[k].detach()), rel_tol=1e-5, abs_tol=1e-5)
        for k in ("fine_loss", "coarse_loss", "loss")
    ) and all(math.isclose(norms[g], ref_norms[g], rel_tol=1e-5, abs_tol=1e-6) for g in GROUPS)


@pytest.mark.parametrize("seed", [0, 1])
def test_loss_and_gradients_match_the_original_step(seed: int) -> None:
    batch = _batch(seed)
    parts, norms, task = _segfm(ORIGINAL, batch, seed)
    ref, ref_norms = _reference(task, batch, seed)
    assert all(norms[g] > 0 for g in GROUPS[:3]) and float(ref["coarse_loss"].detach()) > 0
    assert _same(parts, norms, ref, ref_norms), (
        {k: (float(parts[k].detach()), float(ref[k].detach())) for k in ref},
        norms,
        ref_norms,
    )


def test_each_segfm_rule_changes_the_step() -> None:
    # the comparison above is sensitive: each of segfm's own rules fails it on this batch
    batch = _batch(0)
    parts, norms, _ = _segfm(ORIGINAL, batch, 0)
    for change in ({"excluded": "dropped"}, {"voxels": "valid"}, {"queries": "valid"},
                   {"exclude_positive": True}):  # fmt: skip
        other, other_norms, _ = _segfm(LossRules(**(vars(ORIGINAL) | change)), batch, 0)
        assert not _same(other, other_norms, parts, norms), change
    # and another random draw does too
    other, other_norms, _ = _segfm(ORIGINAL, batch, 1)
    assert not _same(other, other_norms, parts, norms)


def _semantic_batch() -> dict[str, torch.Tensor]:
    """Two labelled inter-volume pairs of 16x32x32 voxels, organs 1-3 as boxes."""
    g = torch.Generator().manual_seed(3)
    b = {}
    for v in (1, 2):
        b[f"view{v}"] = torch.randn(2, 1, *SHAPE, generator=g)
        label = torch.zeros(2, 1, *SHAPE, dtype=torch.long)
        for organ in (1, 2, 3):
            z, y, x = (int(torch.randint(0, n - n // 3, (), generator=g)) for n in SHAPE)
            label[:, :, z : z + 6, y : y + 12, x : x + 12] = organ
        b[f"label{v}"] = label
    return b


def test_semantic_step_matches_the_original() -> None:
    torch.manual_seed(0)
    task = AnatomicalEmbedding(stage="sam_pp", arch="tiny_pp").train()
    ref = build_sam(semantic=True, base_channels=4, out_channels=16, half_outputs=False)
    ref.load_state_dict(task.model.state_dict(), strict=True)
    ref.train()
    batch = _semantic_batch()
    loss = task.sam_pp_semantic_loss(batch)["loss"]
    loss.backward()
    images = torch.stack([batch["view1"], batch["view2"]], 1).flatten(0, 1)
    labels = torch.stack([batch["label1"], batch["label2"]], 1).flatten(0, 1)
    # the original embeds each labelled image alone (batch-norm statistics of one image)
    expected = sam_pp_semantic_loss([ref(x[None]) for x in images], list(labels))
    expected.backward()
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)
    norms, ref_norms = _grad_norms(task.model), _grad_norms(ref)
    assert norms["backbone."] > 0
    for group in GROUPS:
        assert norms[group] == pytest.approx(ref_norms[group], rel=1e-5, abs=1e-6), group
    sem = dict(task.model.named_parameters())["semantic_head.fpn_convs.0.conv.weight"].grad
    ref_sem = dict(ref.named_parameters())["semantic_head.fpn_convs.0.conv.weight"].grad
    torch.testing.assert_close(sem, ref_sem, atol=1e-5, rtol=1e-4)


def test_semantic_steps_come_with_the_original_probability(monkeypatch: pytest.MonkeyPatch) -> None:
    task = AnatomicalEmbedding(stage="sam_pp", arch="tiny_pp")
    chosen: list[str] = []
    one = torch.ones((), requires_grad=True)
    monkeypatch.setattr(
        task, "sam_pp_semantic_loss", lambda b: chosen.append("sem") or {"loss": one}
    )
    monkeypatch.setattr(task, "sam_loss", lambda b: chosen.append("sam") or
                        {"loss": one, "fine_loss": one, "coarse_loss": one})  # fmt: skip
    monkeypatch.setattr(task, "log", lambda *a, **k: None)
    batch = {"intra": {"view1": torch.zeros(1)}, "semantic": {"view1": torch.zeros(1)}}
    torch.manual_seed(0)
    n = 2000
    for _ in range(n):
        task._step(batch, 0, "train")
    share = chosen.count("sem") / n
    assert abs(share - 0.4) < 4 * math.sqrt(0.4 * 0.6 / n), share  # Bernoulli(0.4)


def test_every_parameter_is_trained_by_sgd_with_weight_decay() -> None:
    # the original freezes nothing (ResNet3d frozen_stages=-1, norm_eval=False) and gives every
    # parameter to one SGD (lr 0.02, momentum 0.9, weight decay 1e-4; sam_deeplesion.py l. 126)
    task = AnatomicalEmbedding(stage="sam_pp", arch="tiny_pp")
    opt = task.configure_optimizers()["optimizer"]
    assert len(opt.param_groups) == 1
    group = opt.param_groups[0]
    assert group["lr"] == pytest.approx(0.02 * 0.001)  # the first warm-up step
    assert (group["initial_lr"], group["momentum"], group["weight_decay"]) == (0.02, 0.9, 1e-4)
    assert {id(p) for p in group["params"]} == {id(p) for p in task.model.parameters()}
    assert all(p.requires_grad for p in task.model.parameters())
