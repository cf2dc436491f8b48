"""Weights & Biases: what an offline run holds, and the sweep files' commands."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest
import yaml

from segfm.cli import main

wandb = pytest.importorskip("wandb")
from wandb.proto import wandb_internal_pb2  # noqa: E402
from wandb.sdk.launch.sweeps.utils import create_sweep_command_args  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "conf" / "medsam_npy_slices.yaml"
SWEEPS = sorted((ROOT / "configs" / "sweeps").glob("*.yaml"))


def read_run(run_dir: Path) -> dict[str, Any]:
    """Config, history keys and files of an offline run, from its ``run-<id>.wandb`` log.

    The log is LevelDB's log format (32 KiB blocks of chunks with a 7-byte header) after W&B's
    7-byte file header; every record is a ``wandb_internal_pb2.Record``.
    """
    (log,) = run_dir.glob("run-*.wandb")
    data = log.read_bytes()
    assert data[:4] == b":W&B"
    block, pos, chunk = 32768, 7, b""
    out: dict[str, Any] = {"config": {}, "history": set(), "files": set()}
    while pos + 7 <= len(data):
        room = block - pos % block
        if room < 7:
            pos += room
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pos += 7
        if kind == 0:  # zero padding up to the end of the block
            pos += room - 7
            continue
        chunk, pos = chunk + data[pos : pos + length], pos + length
        if kind not in (1, 4):  # a FIRST or MIDDLE piece: the record goes on
            continue
        record = wandb_internal_pb2.Record()
        record.ParseFromString(chunk)
        chunk = b""
        kind_of = record.WhichOneof("record_type")
        if kind_of == "config":
            out["config"].update({i.key: json.loads(i.value_json) for i in record.config.update})
        elif kind_of == "history":
            out["history"] |= {i.key or "/".join(i.nested_key) for i in record.history.item}
        elif kind_of == "files":
            out["files"] |= {f.path for f in record.files.files}
    return out


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb_home"))
    yield
    wandb.finish()


def _run_with(kind: str, runs: Path) -> tuple[Path, dict[str, Any]]:
    for run_dir in sorted((runs / "wandb").glob("offline-run-*")):
        content = read_run(run_dir)
        if any(key.startswith(kind) for key in content["history"]):
            return run_dir, content
    raise AssertionError(f"no offline run logged {kind}* under {runs}")


def test_offline_run_has_config_metrics_images_table(npy_slices_root, tmp_path, offline_wandb):
    runs = tmp_path / "runs"
    common = [
        "--config",
        str(TINY),
        "--data.init_args.root",
        str(npy_slices_root),
        "--trainer.logger",
        str(ROOT / "configs" / "logger" / "wandb.yaml"),
        "--trainer.logger.init_args.save_dir",
        str(runs),
        "--trainer.enable_progress_bar",
        "false",
    ]
    main(["fit", *common, "--trainer.limit_train_batches", "2", "--trainer.log_every_n_steps", "1"])
    wandb.finish()  # Lightning leaves the run open; the offline log is complete once finished
    (ckpt,) = runs.glob("segfm/*/checkpoints/*.ckpt")
    main(["test", *common, "--ckpt_path", str(ckpt)])
    wandb.finish()

    fit_dir, fit = _run_with("train_loss", runs)
    assert {"train_loss", "val_loss", "val_dice", "epoch"} <= fit["history"]
    test_dir, test = _run_with("test_dsc", runs)
    assert fit_dir != test_dir and {"test_dsc", "test_nsd"} <= test["history"]
    for content in (fit, test):  # the resolved config of segfm, not only the hyper-parameters
        model = content["config"]["model"]
        assert model["class_path"] == "segfm.methods.MedSAM"
        assert model["init_args"]["arch"] == "tiny"
        assert content["config"]["data"]["init_args"]["root"] == str(npy_slices_root)

    images = sorted((test_dir / "files" / "media" / "images" / "overlays").glob("*.png"))
    assert images and images[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (table,) = (test_dir / "files" / "media" / "table" / "test").glob("classes_*.table.json")
    logged = json.loads(table.read_text())
    assert logged["columns"] == ["case", "class", "dsc", "nsd"] and logged["data"]
    assert {str(p.relative_to(test_dir / "files")) for p in [*images, table]} <= test["files"]


def test_runs_sharing_a_save_dir_keep_their_own_config(npy_slices_root, tmp_path, offline_wandb):
    # what a sweep agent does: the same command, run after run, in one folder
    runs = tmp_path / "runs"
    args = [
        "fit",
        "--config",
        str(TINY),
        "--data.init_args.root",
        str(npy_slices_root),
        "--trainer.logger",
        str(ROOT / "configs" / "logger" / "wandb.yaml"),
        "--trainer.logger.init_args.save_dir",
        str(runs),
        "--trainer.limit_train_batches",
        "1",
        "--trainer.limit_val_batches",
        "1",
        "--trainer.enable_progress_bar",
        "false",
    ]
    for lr in ("1e-3", "2e-3"):
        main([*args, f"--model.init_args.lr={lr}"])
        wandb.finish()
    configs = sorted(runs.glob("segfm/*/config.yaml"))  # beside each run's checkpoints
    assert len(configs) == 2
    lrs = {yaml.safe_load(c.read_text())["model"]["init_args"]["lr"] for c in configs}
    assert lrs == {1e-3, 2e-3}


def _samples(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """Two parameter sets per sweep: every parameter at its first / lowest, then last / highest."""
    out = []
    for end in (0, -1):
        values = {}
        for name, param in spec["parameters"].items():
            if "value" in param:
                values[name] = param["value"]
            elif "values" in param:
                values[name] = param["values"][end]
            else:
                values[name] = param["min"] if end == 0 else param["max"]
        out.append(values)
    return out


@pytest.mark.parametrize("sweep", SWEEPS, ids=lambda p: p.name)
def test_sweep_command_resolves_in_the_cli(sweep, capsys, monkeypatch):
    spec = yaml.safe_load(sweep.read_text())
    command = spec["command"]
    assert command[:2] == ["segfm", "fit"] and spec["program"] == "segfm"
    # jsonargparse reads --key=value: ${args}, never ${args_no_hyphens}
    assert command[-1] == "${args}" and "${args_no_hyphens}" not in command
    assert spec["metric"]["name"] in ("val_dice", "val_loss")  # keys the methods log per epoch
    monkeypatch.chdir(ROOT)  # the agent runs from the repository root
    for values in _samples(spec):
        # the flags exactly as the W&B agent builds them
        flags = create_sweep_command_args({"args": {k: {"value": v} for k, v in values.items()}})
        argv = [*command[1:-1], *flags["args"], "--print_config"]
        assert all(a.startswith("--") and "=" in a for a in flags["args"])
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 0
        printed = yaml.safe_load(capsys.readouterr().out)
        assert printed["trainer"]["logger"]["class_path"].endswith("WandbLogger")
        for name, value in values.items():
            node = printed
            for key in name.split("."):
                node = node[key]
            assert node == pytest.approx(value) if isinstance(value, float) else node == value
