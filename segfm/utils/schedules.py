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
    """Per epoch: SegVol's linear warm-up from 0, then cosine to 0 at ``epochs``.

    The factor of epoch ``e`` is ``e / (warmup - 1)`` for ``e < warmup`` (0, 1/9, ..., 1 for
    SegVol's 10 epochs: its ``LinearWarmupCosineAnnealingLR`` from ``warmup_start_lr`` 0, so the
    first epoch runs at 0), then ``(1 + cos(pi (e - warmup) / (epochs - warmup))) / 2``.
    ``warmup`` 0 means no warm-up (cosine from the first epoch); the original gave epoch 0 a rate
    of 0 whatever its warm-up.
    """
    total = max(epochs, warmup + 1)

    def factor(epoch: int) -> float:
        if epoch < warmup:
            return epoch / max(1, warmup - 1)
        return 0.5 * (1 + math.cos(math.pi * (epoch - warmup) / max(1, total - warmup)))

    return {"scheduler": LambdaLR(optimizer, factor), "interval": "epoch"}


def linear_warmup(optimizer: Optimizer, iters: int, ratio: float) -> dict[str, Any]:
    """Per step: from ``ratio`` of the rate up to it over ``iters`` steps, then constant (mmcv)."""

    def factor(step: int) -> float:
        return 1.0 if step >= iters else 1 - (1 - step / iters) * (1 - ratio)

    return {"scheduler": LambdaLR(optimizer, factor), "interval": "step"}
