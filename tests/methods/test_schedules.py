"""Learning-rate schedules of BaseTask, driven by a real Trainer."""

from __future__ import annotations

import itertools
import math
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from segfm.methods.base import BaseTask
from segfm.utils import schedules


class _Linear(BaseTask):
    def configure_models(self) -> None:
        self.net = nn.Linear(2, 1)

    def _step(self, batch: Any, batch_idx: int, stage: str) -> Tensor:
        return self.net(batch).pow(2).mean()


class _RecordLR(pl.Callback):
    def __init__(self) -> None:
        self.lrs: list[tuple[int, float]] = []

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        self.lrs.append((trainer.current_epoch, trainer.optimizers[0].param_groups[0]["lr"]))


def _fit(task: BaseTask, epochs: int, batches: int) -> list[tuple[int, float]]:
    record = _RecordLR()
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[record],
        limit_val_batches=0,
    )
    data = DataLoader(torch.randn(batches, 2), batch_size=1)
    trainer.fit(task, train_dataloaders=data)
    return record.lrs


def test_constant() -> None:
    lrs = _fit(_Linear(lr=0.1), epochs=2, batches=3)
    assert [lr for _, lr in lrs] == pytest.approx([0.1] * 6)


def test_cosine_anneals_to_zero_over_the_run() -> None:
    lrs = [lr for _, lr in _fit(_Linear(lr=0.1, lr_schedule="cosine"), epochs=2, batches=4)]
    assert lrs[0] == pytest.approx(0.1)
    assert all(a > b for a, b in itertools.pairwise(lrs))
    # step k of 8 (0-based): 0.05 (1 + cos(pi k / 8)); the last recorded is k = 7
    assert lrs[-1] == pytest.approx(0.05 * (1 + torch.cos(torch.tensor(7 / 8 * torch.pi)).item()))


def test_multistep_drops_at_the_milestone_epochs() -> None:
    task = _Linear(lr=0.1, lr_schedule="multistep", lr_milestones=(1, 3), lr_gamma=0.5)
    by_epoch = dict(_fit(task, epochs=4, batches=2))
    assert by_epoch == pytest.approx({0: 0.1, 1: 0.05, 2: 0.05, 3: 0.025})


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"lr_schedule": "multistep"}, "lr_milestones"),
        ({"lr_schedule": "multistep", "lr_milestones": (3, 1)}, "lr_milestones"),
        ({"lr_gamma": 0.0}, "lr_gamma"),
    ],
)
def test_bad_schedules(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        _Linear(**kwargs)


def _original_segvol_table(warmup: int, epochs: int) -> list[float]:
    """SegVol's ``LinearWarmupCosineAnnealingLR`` (``utils/lr_scheduler.py``, ``get_lr``), base 1.

    Written from the original's chainable rule: epoch 0 gets ``warmup_start_lr`` (0), each
    warm-up epoch adds ``1 / (warmup - 1)``, epoch ``warmup`` is the base rate, later epochs
    ``(1 + cos(pi (e - warmup) / (epochs - warmup))) / 2``.
    """
    rates = [0.0]
    for epoch in range(1, epochs):
        if epoch < warmup:
            rates.append(rates[-1] + 1 / (warmup - 1))
        elif epoch == warmup:
            rates.append(1.0)
        else:
            rates.append(0.5 * (1 + math.cos(math.pi * (epoch - warmup) / (epochs - warmup))))
    return rates


def test_warmup_cosine_is_segvols_schedule() -> None:
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = schedules.warmup_cosine(optimizer, warmup=10, epochs=500)["scheduler"]
    rates = []
    for _ in range(500):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    # by hand: 0, 1/9, ..., 8/9, 1 over epochs 0-9, then 1 at epoch 10 and the cosine
    head = [0, 1 / 9, 2 / 9, 3 / 9, 4 / 9, 5 / 9, 6 / 9, 7 / 9, 8 / 9, 1, 1]
    assert rates[:11] == pytest.approx(head, abs=1e-12)
    assert rates[255] == pytest.approx(0.5 * (1 + math.cos(math.pi * 245 / 490)))
    assert rates == pytest.approx(_original_segvol_table(10, 500), abs=1e-12)
    assert rates[-1] == pytest.approx(0.5 * (1 + math.cos(math.pi * 489 / 490)))


def test_warmup_cosine_without_warmup_starts_at_the_full_rate() -> None:
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = schedules.warmup_cosine(optimizer, warmup=0, epochs=4)["scheduler"]
    rates = []
    for _ in range(4):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    c = math.cos(math.pi / 4)
    assert rates == pytest.approx([1.0, 0.5 * (1 + c), 0.5, 0.5 * (1 - c)])
