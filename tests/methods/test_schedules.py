"""Learning-rate schedules of BaseTask, driven by a real Trainer."""

from __future__ import annotations

import itertools
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from segfm.methods.base import BaseTask


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
