"""Resuming an interrupted fit reproduces the uninterrupted one, tensor for tensor, on CPU."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.utilities.warnings import PossibleUserWarning

from segfm.cli import main
from segfm.data import NpySliceDataModule

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "conf" / "medsam_npy_slices.yaml"
TINY3D = ROOT / "tests" / "conf" / "sam_med3d_nnunet.yaml"
EPOCHS = 2
STEPS = 3  # training batches per epoch (limit_train_batches)


def _fit(root: Path, save_dir: Path, version: str, *extra: str, config: Path = TINY) -> Path:
    """Fit a tiny method (MedSAM unless ``config`` says otherwise); return the newest checkpoint."""
    main(
        [
            "fit",
            "--config",
            str(config),
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


def _resumed_in_the_middle_of_an_epoch(
    root: Path, tmp_path: Path, *extra: str, config: Path = TINY
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The checkpoints of an uninterrupted fit and of one cut after a batch, then resumed."""
    full = _fit(root, tmp_path, "full", *extra, config=config)
    a = torch.load(full, weights_only=True)
    per_epoch = a["global_step"] // EPOCHS
    # the same run interrupted after the first batch of the second epoch, with a checkpoint
    # written after that batch (a max_steps stop alone saves in the epoch's end hooks, and
    # Lightning then counts the epoch as finished)
    cut = per_epoch + 1
    first = _fit(
        root,
        tmp_path,
        "cut",
        *extra,
        "--trainer.max_steps",
        str(cut),
        "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
        f"--trainer.callbacks.dirpath={tmp_path / 'lightning_logs' / 'cut' / 'checkpoints'}",
        "--trainer.callbacks.filename={step}",
        "--trainer.callbacks.every_n_train_steps=1",
        "--trainer.callbacks.save_top_k=-1",
        config=config,
    )
    assert first.name == f"step={cut}.ckpt"
    state = torch.load(first, weights_only=True)
    assert state["global_step"] == cut
    # the loader's place: one batch of epoch 1 handed out (the fetcher reads no batch ahead)
    loops = state["loops"]["fit_loop"]
    assert loops["epoch_loop.batch_progress"]["current"]["processed"] == 1
    assert loops["state_dict"]["combined_loader"] == [{"epoch": 1, "seed": 0, "batches": 1}]

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed = _fit(root, tmp_path, "resumed", *extra, "--ckpt_path", str(first), config=config)
    not_resumable = [
        w
        for w in caught
        if issubclass(w.category, PossibleUserWarning) and "not resumable" in str(w.message)
    ]
    assert not not_resumable, not_resumable[0].message

    b = torch.load(resumed, weights_only=True)
    assert a["global_step"] == b["global_step"]
    assert a["epoch"] == b["epoch"]
    _assert_same(a["state_dict"], b["state_dict"], "state_dict")
    _assert_same(a["optimizer_states"], b["optimizer_states"], "optimizer_states")
    _assert_same(a["lr_schedulers"], b["lr_schedulers"], "lr_schedulers")
    return a, b


def test_resumed_in_the_middle_of_an_epoch_equals_uninterrupted(npy_slices_root, tmp_path):
    a, _ = _resumed_in_the_middle_of_an_epoch(npy_slices_root, tmp_path)
    assert a["global_step"] == EPOCHS * STEPS


def test_sam_med3d_resumed_in_the_middle_of_an_epoch_equals_uninterrupted(nnunet_root, tmp_path):
    # random crops and flips drawn in the main process (num_workers: 0) continue exactly too
    a, _ = _resumed_in_the_middle_of_an_epoch(
        nnunet_root,
        tmp_path,
        "--data.init_args.cache_dir",
        str(tmp_path / "cache"),
        config=TINY3D,
    )
    assert a["global_step"] // EPOCHS > 1  # so the cut is inside an epoch
