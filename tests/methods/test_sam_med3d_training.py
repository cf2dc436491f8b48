"""SAMMed3D's training against SAM-Med3D's ``train.py``: the optimiser step under accumulation.

SAM-Med3D (uni-medical/SAM-Med3D @f3de1fa, ``train.py`` lines 343-372) divides each batch's
loss by ``accumulation_steps`` (20) before ``backward`` and steps the optimiser every 20 batches;
the recipes set ``trainer.accumulate_grad_batches: 20`` and let Lightning do both.
"""

from __future__ import annotations

import copy
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from segfm.methods import SAMMed3D
from segfm.methods.sam_med3d import ClickSimulation

SIZE = 32


def _batches(n: int) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(5)
    out = []
    for i in range(n):
        label = torch.zeros(1, SIZE, SIZE, SIZE, dtype=torch.long)
        lo = 4 + 3 * i
        label[0, lo : lo + 12, 6:20, 8 : 18 + i] = 1
        image = torch.randn(1, SIZE, SIZE, SIZE, generator=gen) + 2.0 * label
        out.append({"image": image, "label": label})
    return out


class _Seed(pl.Callback):
    """Seeds the global generator before every training batch (the clicks are drawn from it)."""

    def on_train_batch_start(self, trainer: Any, module: Any, batch: Any, batch_idx: int) -> None:
        torch.manual_seed(100 + batch_idx)


class _Grads(pl.Callback):
    def __init__(self) -> None:
        self.grads: list[dict[str, torch.Tensor]] = []

    def on_before_optimizer_step(self, trainer: Any, module: Any, optimizer: Any) -> None:
        self.grads.append(
            {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
        )


def test_lightning_accumulation_averages_the_batches_as_the_original() -> None:
    torch.manual_seed(0)
    method = SAMMed3D(
        arch="tiny",
        image_size=SIZE,
        click_simulation=ClickSimulation(train_iterations=2),
        lambda_ce=0.0,
        lr_schedule="constant",
        export_official=False,
    )
    manual = copy.deepcopy(method)
    accumulate = 3
    batches = _batches(accumulate)
    grads = _Grads()
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=1,
        accumulate_grad_batches=accumulate,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[_Seed(), grads],
    )
    loader = DataLoader(batches, batch_size=1, generator=torch.Generator().manual_seed(0))
    trainer.fit(method, train_dataloaders=loader)
    assert len(grads.grads) == 1

    # the original: loss /= accumulation_steps; backward for each batch; one optimiser step
    manual.log = lambda *args, **kwargs: None  # type: ignore[method-assign]
    for i, batch in enumerate(batches):
        torch.manual_seed(100 + i)
        batch = {k: v[None] for k, v in batch.items()}
        loss = manual.training_step(batch, i)
        (loss / accumulate).backward()
    expected = {n: p.grad for n, p in manual.named_parameters() if p.grad is not None}
    assert expected.keys() == grads.grads[0].keys()
    for name, grad in expected.items():
        torch.testing.assert_close(grads.grads[0][name], grad, atol=1e-7, rtol=1e-5, msg=name)
