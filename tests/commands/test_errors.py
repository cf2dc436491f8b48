"""Errors while the config is parsed or the classes are built: one or two lines, exit status 2."""

import subprocess
import sys
from pathlib import Path

import pytest

from segfm.cli import main
from segfm.commands.usage import UsageError
from segfm.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "tests" / "conf" / "medsam_npy_slices.yaml")


def _fit(root, *extra):
    return ["fit", "--config", TINY, "--data.init_args.root", str(root), *extra]


USAGE = {
    "unknown-trainer-option": (
        ["--trainer.max_epochz", "2"],
        "unknown option --trainer.max_epochz; did you mean --trainer.max_epochs?",
    ),
    "unknown-option": (["--ckpt_pth", "x"], "unknown option --ckpt_pth; did you mean --ckpt_path?"),
    "unknown-model-option": (
        ["--model.init_args.lr_schedul", "cosine"],
        "--model.init_args.lr_schedul is not an option of segfm.methods.MedSAM; "
        "did you mean --model.init_args.lr_schedule?",
    ),
    "unknown-option-in-a-group": (
        ["--model.init_args.train_prompts.box_shfit", "3"],
        "--model.init_args.train_prompts.box_shfit is not an option of segfm.methods.MedSAM; "
        "did you mean --model.init_args.train_prompts.box_shift?",
    ),
    "unknown-data-option": (
        ["--data.init_args.batchsize", "3"],
        "--data.init_args.batchsize is not an option of segfm.data.NpySliceDataModule; "
        "did you mean --data.init_args.batch_size?",
    ),
    "wrong-type": (
        ["--trainer.max_epochs", "many"],
        "--trainer.max_epochs: expected int (or null), got 'many'",
    ),
    "wrong-model-type": (
        ["--model.init_args.lr", "fast"],
        "--model.init_args.lr: expected float (or null), got 'fast'",
    ),
    "wrong-type-in-a-group": (
        ["--model.init_args.train_prompts.box_shift", "far"],
        "--model.init_args.train_prompts.box_shift: expected int (or null), got 'far'",
    ),
    "unknown-class-path": (
        ["--data", "segfm.data.NpzDataModul"],
        "--data segfm.data.NpzDataModul: no such class; did you mean segfm.data.NpzDataModule?",
    ),
}


@pytest.mark.parametrize("case", list(USAGE))
def test_usage_errors_are_one_line_with_the_nearest_option(case, npy_slices_root, capsys):
    extra, expected = USAGE[case]
    with pytest.raises(SystemExit) as info:
        main(_fit(npy_slices_root, *extra))
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-2:] == [f"segfm: error: {expected}", "segfm: see segfm fit --help for the options"]
    assert "usage:" not in "\n".join(err) and "Traceback" not in "\n".join(err)


def test_missing_options_are_named_as_typed(capsys):
    with pytest.raises(SystemExit) as info:
        main(["fit"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-2] == (
        "segfm: error: missing --data, --model: give them on the command line or in a --config file"
    )


def test_a_missing_required_value_names_its_option(capsys):
    with pytest.raises(SystemExit) as info:
        main(["fit", "--config", TINY])  # the config leaves data.root null
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-2] == (
        "segfm: error: segfm.data.NpySliceDataModule needs root: give --data.init_args.root VALUE "
        "(or set it in the config)"
    )


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["fitt"], "unknown subcommand 'fitt'; did you mean fit?"),
        (["track", "--embedings", "e", "--pairs", "p"], "unknown option --embedings; did you mean"),
        (["track", "--embeddings", "e", "--pairs", "p", "--method", "best"], "--method: expected"),
        (["export", "--ckpt_path", "x.ckpt"], "missing --output: give them on the command line"),
        (["--print_config"], "choose a subcommand"),
    ],
)
def test_usage_errors_of_segfms_own_subcommands(args, expected, capsys):
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and err[0].startswith(f"segfm: error: {expected}"), err


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (
            ["--data.init_args.batch_size", "0"],
            "--data (NpySliceDataModule): batch_size must be >= 1, got 0",
        ),
        (["--model.init_args.checkpoint", "{tmp}/nope.pth"], "--model (MedSAM): {tmp}/nope.pth"),
        (["--model.init_args.lr", "-1"], "--model (MedSAM): lr must be positive, got -1"),
        (["--trainer.devices", "0"], "--trainer: `Trainer(devices="),
    ],
    ids=["data-value-error", "model-checkpoint-missing", "model-value-error", "trainer"],
)
def test_build_errors_name_the_option(extra, expected, npy_slices_root, tmp_path, capsys):
    extra = [e.format(tmp=tmp_path) for e in extra]
    with pytest.raises(ConfigError) as info:
        main(_fit(npy_slices_root, *extra))
    message = str(info.value)
    assert message.startswith(expected.format(tmp=tmp_path)) and "\n" not in message
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-2] == f"segfm: error: {message}" and "--debug" in err[-1]


def test_debug_keeps_the_traceback(npy_slices_root):
    with pytest.raises(UsageError) as info:
        main([*_fit(npy_slices_root, "--trainer.max_epochz", "2"), "--debug"])
    assert info.value.__cause__ is not None  # jsonargparse's own error, with its traceback
    with pytest.raises(ConfigError) as info:
        main([*_fit(npy_slices_root, "--data.init_args.batch_size", "0"), "--debug"])
    assert isinstance(info.value.__cause__, ValueError)


def test_console_build_error_is_two_lines_and_status_2(npy_slices_root, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "segfm", *_fit(npy_slices_root, "--data.init_args.batch_size", "0")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[-2].startswith("segfm: error: --data (NpySliceDataModule): batch_size")
    assert "--debug" in lines[-1]


def test_a_second_test_into_the_same_run_folder_is_one_line(npy_slices_root, tmp_path, capsys):
    args = [
        "test",
        "--config",
        TINY,
        "--data.init_args.root",
        str(npy_slices_root),
        "--trainer.logger.init_args.save_dir",
        str(tmp_path),
        "--trainer.logger.init_args.version",
        "v",
    ]
    main(args)
    with pytest.raises(ConfigError) as info:
        main(args)
    assert str(info.value).endswith(
        "config_test.yaml exists: this run folder already holds a test run; give another "
        "--trainer.logger.init_args.version (or move that file away)"
    )
    assert capsys.readouterr().err.strip().splitlines()[-2].startswith("segfm: error: ")
