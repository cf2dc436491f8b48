"""SAM++'s prototype loss on hand-built features."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from segfm.losses import SupConMeanLoss


def test_matches_its_definition() -> None:
    g = torch.Generator().manual_seed(0)
    feats = F.normalize(torch.randn(12, 4, generator=g), dim=1)
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 2, 0, 1, 2, 0, 0])
    loss = SupConMeanLoss(temperature=0.1)(feats, labels)
    terms = []
    for c in (1, 2):
        proto = feats[labels == c].mean(0)
        logp = torch.log_softmax(feats @ proto / 0.1, 0)
        terms.append(-logp[labels == c].mean())
    assert torch.allclose(loss, torch.stack(terms).mean(), atol=1e-6)


def test_clustered_organs_give_a_lower_loss() -> None:
    labels = torch.tensor([0] * 4 + [1] * 4 + [2] * 4)
    centres = torch.eye(3)
    clustered = centres[labels] + 0.01 * torch.randn(
        12, 3, generator=torch.Generator().manual_seed(1)
    )
    mixed = clustered[torch.randperm(12, generator=torch.Generator().manual_seed(2))]
    loss = SupConMeanLoss(0.1)
    assert loss(F.normalize(clustered, dim=1), labels) < loss(F.normalize(mixed, dim=1), labels)


def test_background_only_gives_zero() -> None:
    feats = torch.randn(5, 3, requires_grad=True)
    out = SupConMeanLoss()(feats, torch.zeros(5, dtype=torch.long))
    assert out.item() == 0.0
    out.backward()  # still part of the graph


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="temperature"):
        SupConMeanLoss(temperature=0)
    with pytest.raises(ValueError, match="features"):
        SupConMeanLoss()(torch.zeros(3, 2), torch.zeros(4, dtype=torch.long))
