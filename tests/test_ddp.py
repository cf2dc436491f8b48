"""DDP on two CPU processes (gloo), driven from the command line as a user would."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import torch

from segfm.data import NpySliceDataModule

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "conf" / "medsam_npy_slices.yaml"
# 5 cases: 3 for test (an odd count, so a padding sampler would repeat one), 1 val, 1 train
SPLIT = {"val_fraction": 0.2, "test_fraction": 0.6}


def _segfm(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run(
        [sys.executable, "-m", "segfm", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def test_ddp_two_cpu_processes_fit_then_test_each_case_once(npy_slices_root, tmp_path):
    common = [
        "--config",
        str(TINY),
        "--data.init_args.root",
        str(npy_slices_root),
        "--data.init_args.val_fraction",
        str(SPLIT["val_fraction"]),
        "--data.init_args.test_fraction",
        str(SPLIT["test_fraction"]),
        "--trainer",  # the shipped DDP file (find_unused_parameters, as MedSAM needs) on 2 CPUs
        str(ROOT / "configs" / "trainer" / "ddp.yaml"),
        "--trainer.accelerator",
        "cpu",
        "--trainer.devices",
        "2",
        "--trainer.precision",
        "32-true",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.logger.init_args.save_dir",
        str(tmp_path),
        "--trainer.logger.init_args.version",
        "run",
    ]
    _segfm(["fit", *common, "--trainer.max_epochs", "1"], tmp_path)
    run = tmp_path / "lightning_logs" / "run"
    ckpt = run / "checkpoints" / "last.ckpt"
    if not ckpt.is_file():
        (ckpt,) = sorted((run / "checkpoints").glob("*.ckpt"))
    assert (run / "checkpoints" / "final.pth").is_file()

    _segfm(["test", *common, "--ckpt_path", str(ckpt)], tmp_path)
    data = NpySliceDataModule(str(npy_slices_root), **SPLIT)
    data.setup("test")
    expected = sorted(p.stem for p in data.datasets["test"].paths)
    assert len(expected) == 3
    with (run / "protocol_interactive_cases.csv").open() as f:
        cases = [row["case"] for row in csv.DictReader(f)]
    assert sorted(cases) == expected, f"each test case exactly once, got {cases}"
    predictions = sorted(p.name.removesuffix(".nii.gz") for p in (run / "predictions").iterdir())
    assert predictions == expected


def test_ddp_interactive_protocol_scores_each_case_once(npz_root, tmp_path):
    out = tmp_path / "out"
    _segfm(
        [
            "test",
            "--config",
            str(ROOT / "tests" / "conf" / "sam_med3d_nnunet.yaml"),
            "--data",
            "segfm.data.NpzDataModule",
            "--data.init_args.root",
            str(npz_root),
            "--data.init_args.num_workers",
            "0",
            "--data.init_args.patch_size",
            "32",
            "--model.init_args.protocol",
            "interactive",
            "--model.init_args.evaluation.clicks",
            "2",
            "--model.init_args.output_dir",
            str(out),
            "--trainer.strategy",
            "ddp",
            "--trainer.accelerator",
            "cpu",
            "--trainer.devices",
            "2",
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.logger.init_args.save_dir",
            str(tmp_path),
        ],
        tmp_path,
    )
    masks = sorted(f"{p.parent.parent.name}/{p.stem}" for p in npz_root.rglob("test_mask/*.npz"))
    with (out / "protocol_interactive_cases.csv").open() as f:
        cases = [row["case"] for row in csv.DictReader(f)]
    assert len(cases) == len(set(cases)) == len(masks)
    predictions = sorted(p.name for p in (out / "predictions").glob("*.npz"))
    assert predictions == sorted(p.name for p in npz_root.rglob("test_mask/*.npz"))


def test_ddp_fit_resumed_in_the_middle_of_an_epoch_equals_uninterrupted(nnunet_root, tmp_path):
    """Two processes with random crops and flips, cut after a batch of the second epoch.

    The samples load in the main processes (workers are covered by tests/data/test_loaders.py:
    a sample's draws do not depend on the process that loads it).
    """
    from tests.test_resume import _assert_same

    def fit(version: str, *extra: str) -> Path:
        _segfm(
            [
                "fit",
                "--config",
                str(ROOT / "tests" / "conf" / "sam_med3d_nnunet.yaml"),
                "--data.init_args.root",
                str(nnunet_root),
                "--data.init_args.cache_dir",
                str(tmp_path / "cache"),
                "--data.init_args.num_workers",
                "0",
                "--data.init_args.batch_size",
                "1",
                "--trainer.strategy",
                "ddp_find_unused_parameters_true",
                "--trainer.accelerator",
                "cpu",
                "--trainer.devices",
                "2",
                "--trainer.max_epochs",
                "2",
                "--trainer.limit_val_batches",
                "1",
                "--trainer.num_sanity_val_steps",
                "0",
                "--trainer.enable_progress_bar",
                "false",
                "--trainer.logger.init_args.save_dir",
                str(tmp_path),
                "--trainer.logger.init_args.version",
                version,
                *extra,
            ],
            tmp_path,
        )
        ckpts = (tmp_path / "lightning_logs" / version / "checkpoints").glob("*.ckpt")
        return max(ckpts, key=lambda p: p.stat().st_mtime_ns)

    full = torch.load(fit("full"), weights_only=True)
    per_epoch = full["global_step"] // 2
    assert per_epoch > 1, "the cut must fall inside an epoch"
    cut = per_epoch + 1  # after the first batch of the second epoch
    first = fit(
        "cut",
        "--trainer.max_steps",
        str(cut),
        "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
        f"--trainer.callbacks.dirpath={tmp_path / 'lightning_logs' / 'cut' / 'checkpoints'}",
        "--trainer.callbacks.filename={step}",
        "--trainer.callbacks.every_n_train_steps=1",
        "--trainer.callbacks.save_top_k=-1",
    )
    state = torch.load(first, weights_only=True)
    assert state["global_step"] == cut
    assert state["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [
        {"epoch": 1, "seed": 0, "batches": 1}
    ]
    assert len(state["random_states"]) == 2  # both processes' generators
    resumed = torch.load(fit("resumed", "--ckpt_path", str(first)), weights_only=True)
    assert resumed["global_step"] == full["global_step"]
    _assert_same(full["state_dict"], resumed["state_dict"], "state_dict")
    _assert_same(full["optimizer_states"], resumed["optimizer_states"], "optimizer_states")
