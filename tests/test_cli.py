"""The segfm command line, driven in-process like a user would type it."""

import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml

from segfm.checkpoints.sam import load_official
from segfm.cli import main

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))
RUN_CONFIGS = [p for p in CONFIGS if yaml.safe_load(p.read_text()).get("model")]
TINY = ROOT / "tests" / "conf" / "medsam_npy_slices.yaml"


def test_help_lists_subcommands():
    out = subprocess.run(
        [sys.executable, "-m", "segfm", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for sub in ("fit", "validate", "test", "predict", "export"):
        assert sub in out


def test_export_help():
    out = subprocess.run(
        [sys.executable, "-m", "segfm", "export", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "--ckpt_path" in out and "--format" in out and "--output" in out


@pytest.mark.parametrize("config", [*RUN_CONFIGS, TINY], ids=lambda p: p.name)
def test_run_configs_parse(config, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    expected = yaml.safe_load(config.read_text())
    assert printed["model"]["class_path"] == expected["model"]["class_path"]
    assert printed["data"]["class_path"] == expected["data"]["class_path"]
    for key, value in expected["model"]["init_args"].items():
        got = printed["model"]["init_args"][key]
        if isinstance(value, dict):  # an option group: the printed one adds its defaults
            got = {k: got[k] for k in value}
        assert got == value, key


@pytest.mark.parametrize(
    ("group", "config"),
    [("trainer", p) for p in sorted((ROOT / "configs" / "trainer").glob("*.yaml"))]
    + [("data", p) for p in sorted((ROOT / "configs" / "data").glob("*.yaml"))]
    + [("trainer.logger", p) for p in sorted((ROOT / "configs" / "logger").glob("*.yaml"))],
    ids=lambda v: v if isinstance(v, str) else v.name,
)
def test_group_configs_parse(group, config, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(RUN_CONFIGS[0]), f"--{group}", str(config), "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    node = printed
    for key in group.split("."):
        node = node[key]
    expected = yaml.safe_load(config.read_text())
    for key, value in expected.items():
        if key != "init_args":
            assert node[key] == value


def test_repeated_config_later_wins(tmp_path, capsys):
    override = tmp_path / "override.yaml"
    override.write_text(
        "model:\n  init_args:\n    train_prompts:\n      box_shift: 7\ntrainer:\n  max_epochs: 3\n"
    )
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(TINY), "--config", str(override), "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["init_args"]["train_prompts"]["box_shift"] == 7
    assert printed["model"]["init_args"]["arch"] == "tiny"
    assert printed["trainer"]["max_epochs"] == 3


def test_python_m_segfm_equals_console_script():
    a = subprocess.run(
        [sys.executable, "-m", "segfm", "fit", "--config", str(TINY), "--print_config"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    from segfm.cli import main as entry  # the console script's target

    assert entry is main and "segfm.methods.MedSAM" in a


def _run_dir(save_dir: Path) -> Path:
    (version,) = (save_dir / "lightning_logs").iterdir()
    return version


def test_fit_test_export_from_cli(npy_slices_root, tmp_path):
    common = [
        "--config",
        str(TINY),
        "--data.init_args.root",
        str(npy_slices_root),
        "--trainer.logger.init_args.save_dir",
        str(tmp_path),
        "--trainer.logger.init_args.version",
        "run",
    ]
    main(["fit", *common, "--trainer.max_epochs", "2"])
    run = tmp_path / "lightning_logs" / "run"
    ckpts = sorted((run / "checkpoints").glob("*.ckpt"))
    assert ckpts, "fit wrote no checkpoint"
    for ckpt in ckpts:  # an official twin beside every checkpoint
        assert ckpt.with_suffix(".pth").is_file()
    assert (run / "checkpoints" / "final.pth").is_file()
    assert (run / "config.yaml").is_file()

    ckpt = ckpts[-1]
    main(["test", *common, "--ckpt_path", str(ckpt)])
    assert (run / "config_test.yaml").is_file()
    # MedSAM's own test: the interactive protocol with the box alone (one step per case)
    rows = (run / "protocol_interactive_cases.csv").read_text().splitlines()
    assert rows[0].startswith("case,") and len(rows) >= 2
    steps = (run / "protocol_interactive_steps.csv").read_text().splitlines()
    assert len(steps) == len(rows) and all(",box," in s for s in steps[1:])
    preds = sorted((run / "predictions").glob("*.nii.gz"))
    assert len(preds) == len(rows) - 1
    assert list((run / "overlays").glob("*.png"))
    for pred in preds:  # predictions on the source grid with the source affine
        npz = np.load(npy_slices_root / "npz" / pred.name.replace(".nii.gz", ".npz"))
        img = nib.load(pred)
        np.testing.assert_allclose(img.affine, npz["affine"])
        assert img.shape == tuple(reversed(npz["imgs"].shape))

    predict_dir = tmp_path / "predict"
    main(
        [
            "predict",
            *common,
            "--ckpt_path",
            str(ckpt),
            "--model.init_args.output_dir",
            str(predict_dir),
        ]
    )
    assert sorted(p.name for p in (predict_dir / "predictions").iterdir()) == [
        p.name for p in preds
    ]

    out = tmp_path / "medsam_tiny.pth"
    main(["export", "--ckpt_path", str(ckpt), "--format", "sam", "--output", str(out)])
    exported = load_official(out)
    state = torch.load(ckpt, weights_only=True, map_location="cpu")["state_dict"]
    assert set(exported) == {k.removeprefix("model.") for k in state}
    for k, v in exported.items():
        assert torch.equal(v, state[f"model.{k}"])

    # importing goes the other way: validate a model initialised from the exported file
    cli = main(["validate", *common, "--model.init_args.checkpoint", str(out)])
    for k, v in cli.model.model.state_dict().items():
        assert torch.equal(v, exported[k])


def test_missing_data_folder_is_one_line(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "segfm",
            "fit",
            "--config",
            str(TINY),
            "--data.init_args.root",
            str(tmp_path / "nowhere"),
            "--trainer.fast_dev_run",
            "true",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert str(tmp_path / "nowhere") in proc.stderr
