"""Resuming an interrupted fit reproduces the uninterrupted one, tensor for tensor, on CPU."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from segfm.cli import main
from segfm.data import NpySliceDataModule

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "conf" / "medsam_npy_slices.yaml"
EPOCHS = 2
STEPS = 3  # training batches per epoch (limit_train_batches)


def _fit(root: Path, save_dir: Path, version: str, *extra: str) -> Path:
    """Fit the tiny MedSAM; return the newest checkpoint."""
    main(
        [
            "fit",
            "--config",
            str(TINY),
            "--data.init_args.root",
            str(root),
            "--trainer.max_epochs",
            str(EPOCHS),
            "--trainer.limit_train_batches",
            str(STEPS),
            "--trainer.limit_val_batches",
            "1",
            "--trainer.num_sanity_val_steps",
            "0",
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.logger.init_args.save_dir",
            str(save_dir),
            "--trainer.logger.init_args.version",
            version,
            *extra,
        ]
    )
    ckpts = (save_dir / "lightning_logs" / version / "checkpoints").glob("*.ckpt")
    return max(ckpts, key=lambda p: p.stat().st_mtime_ns)


def _assert_same(a: object, b: object, where: str = "checkpoint") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.shape == b.shape, where
        if not torch.equal(a, b):
            diff = (a.double() - b.double()).abs().max().item()
            raise AssertionError(f"{where} differs (max |a - b| = {diff:.3g})")
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, list | tuple):
        assert isinstance(b, list | tuple) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def test_interrupted_then_resumed_fit_equals_uninterrupted(npy_slices_root, tmp_path):
    data = NpySliceDataModule(str(npy_slices_root), batch_size=4, val_fraction=0.25)
    data.setup("fit")
    assert math.ceil(len(data.datasets["train"]) / 4) > STEPS  # so the order of batches matters

    full = _fit(npy_slices_root, tmp_path, "full")
    # the same run stopped after its first epoch (as a crash or a time limit would) ...
    first = _fit(npy_slices_root, tmp_path, "cut", "--trainer.max_steps", str(STEPS))
    assert torch.load(first, weights_only=True)["global_step"] == STEPS
    # ... then resumed from its checkpoint to the planned end (into a new log folder, as
    # Lightning's loggers expect)
    resumed = _fit(npy_slices_root, tmp_path, "resumed", "--ckpt_path", str(first))

    a, b = torch.load(full, weights_only=True), torch.load(resumed, weights_only=True)
    assert a["global_step"] == b["global_step"] == EPOCHS * STEPS
    assert a["epoch"] == b["epoch"]
    _assert_same(a["state_dict"], b["state_dict"], "state_dict")
    _assert_same(a["optimizer_states"], b["optimizer_states"], "optimizer_states")
    _assert_same(a["lr_schedulers"], b["lr_schedulers"], "lr_schedulers")
