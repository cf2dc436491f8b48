"""Learning-rate schedules of the methods' recipes, as Lightning's ``lr_scheduler`` entries.

Each function takes the optimiser and returns ``{"scheduler": ..., "interval": ...}``, the
value of ``"lr_scheduler"`` in what ``configure_optimizers`` returns.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, LambdaLR, MultiStepLR


def cosine(optimizer: Optimizer, steps: int) -> dict[str, Any]:
    """Cosine annealing to zero over ``steps`` optimiser steps."""
    return {"scheduler": CosineAnnealingLR(optimizer, T_max=max(1, steps)), "interval": "step"}


def multistep(optimizer: Optimizer, milestones: Sequence[int], gamma: float) -> dict[str, Any]:
    """The rate times ``gamma`` at each epoch of ``milestones`` (SAM-Med3D's recipe)."""
    scheduler = MultiStepLR(optimizer, milestones=list(milestones), gamma=gamma)
    return {"scheduler": scheduler, "interval": "epoch"}


def warmup_cosine(optimizer: Optimizer, warmup: int, epochs: int) -> dict[str, Any]:
    """Per epoch: linear warm-up ``(e + 1) / (warmup + 1)``, then cosine to 0 (SegVol's recipe).

    SegVol's own warm-up starts at 0, which loses its first epoch; this one starts above it.
    """
    total = max(epochs, warmup + 1)

    def factor(epoch: int) -> float:
        if epoch < warmup:
            return (epoch + 1) / (warmup + 1)
        return 0.5 * (1 + math.cos(math.pi * (epoch - warmup) / max(1, total - warmup)))

    return {"scheduler": LambdaLR(optimizer, factor), "interval": "epoch"}


def linear_warmup(optimizer: Optimizer, iters: int, ratio: float) -> dict[str, Any]:
    """Per step: from ``ratio`` of the rate up to it over ``iters`` steps, then constant (mmcv)."""

    def factor(step: int) -> float:
        return 1.0 if step >= iters else 1 - (1 - step / iters) * (1 - ratio)

    return {"scheduler": LambdaLR(optimizer, factor), "interval": "step"}
