"""``segfm verify-data``: every problem of a dataset listed, with its file, before training."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import segfm.data
from segfm.cli import main
from segfm.commands.verify_data import verify_data_command
from segfm.data import (
    _MODULES,
    BaseDataModule,
    ClassFolderDataModule,
    NnUNetDataModule,
    NpySliceDataModule,
    NpzDataModule,
    VolumeDataModule,
)
from segfm.data.io.checks import Problem, Report
from segfm.data.io.nifti import read_nifti, write_nifti
from segfm.errors import ConfigError, DataError

ROOT = Path(__file__).resolve().parents[1]


def _tree(root: Path) -> dict[str, int]:
    """Every file under ``root`` with its size (to show that nothing was written)."""
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize(
    ("fixture", "module"),
    [
        ("npy_slices_root", NpySliceDataModule),
        ("nnunet_root", NnUNetDataModule),
        ("class_folder_root", ClassFolderDataModule),
        ("npz_root", NpzDataModule),
    ],
)
def test_the_fixtures_are_clean_and_nothing_is_written(fixture, module, request):
    root = request.getfixturevalue(fixture)
    before = _tree(root)
    report = module(str(root)).verify()
    assert report.errors == [], report.text()
    assert report.checked >= 5
    assert _tree(root) == before
    assert report.text().splitlines()[-1].startswith(f"OK: {module.__name__} at {root}")


def test_npz_evaluation_case_without_mask_is_a_warning(npz_root):
    report = NpzDataModule(str(npz_root)).verify()
    (warning,) = report.warnings
    assert warning.file == str(npz_root / "test" / "MR_Brain_t01.npz")
    assert "no ground truth" in warning.message and warning.fix


def test_every_problem_is_listed_not_only_the_first(nnunet_root, tmp_path):
    root = shutil.copytree(nnunet_root, tmp_path / "ds")
    (root / "labelsTr" / "synth_000.nii.gz").unlink()  # image without label
    (root / "imagesTr" / "synth_001_0000.nii.gz").write_bytes(b"garbage")  # unreadable
    label = read_nifti(root / "labelsTr" / "synth_002.nii.gz")
    write_nifti(root / "labelsTr" / "synth_002.nii.gz", label.array + 7, label.affine)  # ids 7+
    report = NnUNetDataModule(str(root)).verify()
    files = [p.file for p in report.errors]
    assert str(root / "imagesTr" / "synth_000_0000.nii.gz") in files
    assert str(root / "imagesTr" / "synth_001_0000.nii.gz") in files
    assert str(root / "labelsTr" / "synth_002.nii.gz") in files
    assert len(report.errors) == 3, report.text()
    assert all(p.fix for p in report.errors)
    assert report.text().splitlines()[-1].startswith("FAILED:")


def test_problem_and_report_render_file_and_fix():
    report = Report("X", "/data")
    report.error("/data/a.npz", "is broken", "replace it")
    report.warn("/data/b.npz", "is empty", "check it")
    assert str(report.problems[0]) == "ERROR: /data/a.npz: is broken; replace it"
    assert report.problems[1] == Problem("warning", "/data/b.npz", "is empty", "check it")
    assert (
        report.text().splitlines()[-1]
        == "FAILED: X at /data: 0 cases checked, 1 errors, 1 warnings"
    )


def test_reader_errors_are_split_into_message_and_fix(tmp_path):
    report = Report("X", str(tmp_path))
    missing = tmp_path / "nowhere.nii.gz"
    assert report.attempt(missing, read_nifti, missing) is None
    (problem,) = report.problems
    assert problem.file == str(missing)
    assert problem.message == "does not exist" and problem.fix == "check the path"


def test_max_cases_limits_reading_but_not_pairing(nnunet_root, tmp_path):
    root = shutil.copytree(nnunet_root, tmp_path / "ds")
    (root / "labelsTr" / "synth_005.nii.gz").unlink()
    report = NnUNetDataModule(str(root)).verify(max_cases=1)
    assert report.checked == 2  # one of imagesTr, one of imagesTs
    assert [p.file for p in report.errors] == [str(root / "imagesTr" / "synth_005_0000.nii.gz")]


def test_missing_root_is_one_error(tmp_path):
    report = NpzDataModule(str(tmp_path / "nowhere")).verify()
    assert [p.file for p in report.errors] == [str(tmp_path / "nowhere")]


@pytest.mark.parametrize("name", sorted(_MODULES))
def test_every_data_module_verifies_its_root(name, tmp_path):
    cls = getattr(segfm.data, name)
    extra = {"dataset_codes": ["0000"]} if name == "M3DSegDataModule" else {}
    missing = cls(str(tmp_path / "nowhere"), **extra).verify()
    assert [p.file for p in missing.errors] == [str(tmp_path / "nowhere")], missing.text()
    assert missing.text().splitlines()[-1].startswith(f"FAILED: {name} at ")
    empty = cls(str(tmp_path), **extra).verify()
    if cls in (BaseDataModule, VolumeDataModule):  # no format of their own: the root suffices
        assert empty.problems == [] and empty.checked == 0
    else:  # an empty folder is not a dataset of any format
        assert empty.errors, empty.text()
        assert all(p.file.startswith(str(tmp_path)) and p.fix for p in empty.errors)


# --- the command line --------------------------------------------------------------------------


def test_cli_ok_with_a_data_config_and_root(npz_root, capsys):
    main(
        [
            "verify-data",
            "--data",
            str(ROOT / "configs/data/npz.yaml"),
            "--data.init_args.root",
            str(npz_root),
        ]
    )
    out = capsys.readouterr().out
    assert out.splitlines()[-1].startswith(f"OK: NpzDataModule at {npz_root}: 15 cases checked")


def test_cli_fails_with_every_problem_printed_and_one_error_line(npy_slices_root, tmp_path, capsys):
    root = shutil.copytree(npy_slices_root, tmp_path / "npy")
    first, second = sorted((root / "gts").iterdir())[:2]
    first.unlink()
    np.save(second, np.load(second).astype(np.float32) + 0.5)
    with pytest.raises(DataError):
        main(
            [
                "verify-data",
                "--data",
                str(ROOT / "configs/data/npy_slices.yaml"),
                "--data.init_args.root",
                str(root),
            ]
        )
    captured = capsys.readouterr()
    assert f"ERROR: {root / 'imgs' / first.name}: has no mask in {root / 'gts'}" in captured.out
    assert f"ERROR: {second}: has dtype float32" in captured.out
    err = captured.err.strip().splitlines()
    assert err[0] == (
        f"segfm: error: {root} has 2 errors (listed above); fix them and run segfm verify-data "
        "again"
    )
    assert len(err) == 2 and "--debug" in err[1]


def test_cli_strict_makes_warnings_fatal(npz_root, capsys):
    args = [
        "verify-data",
        "--data",
        str(ROOT / "configs/data/npz.yaml"),
        "--data.init_args.root",
        str(npz_root),
    ]
    main(args)
    with pytest.raises(DataError, match="has 1 problem "):
        main([*args, "--strict", "true"])


def test_cli_reads_the_data_block_of_a_run_config_with_overrides(nnunet_root, capsys):
    config = ROOT / "tests" / "conf" / "sam_med3d_nnunet.yaml"  # its root is null
    main(["verify-data", "--config", str(config), "--data.init_args.root", str(nnunet_root)])
    assert capsys.readouterr().out.splitlines()[-1].startswith("OK: NnUNetDataModule")


def test_cli_run_config_naming_a_data_config(class_folder_root, tmp_path, capsys):
    (tmp_path / "data.yaml").write_text(
        f"class_path: segfm.data.ClassFolderDataModule\ninit_args:\n  root: {class_folder_root}\n"
    )
    (tmp_path / "run.yaml").write_text("seed_everything: 1\ndata: data.yaml\ntrainer: {}\n")
    main(["verify-data", "--config", str(tmp_path / "run.yaml")])
    assert capsys.readouterr().out.splitlines()[-1].startswith("OK: ClassFolderDataModule")


def test_cli_needs_a_data_module(capsys):
    with pytest.raises(ConfigError, match="needs --data"):
        main(["verify-data"])
    with pytest.raises(ConfigError, match="name the format"):
        main(["verify-data", "--data.init_args.root", "x"])


def test_cli_run_config_without_data_block(tmp_path, capsys):
    (tmp_path / "run.yaml").write_text("trainer: {}\n")
    with pytest.raises(ConfigError, match=f"{tmp_path / 'run.yaml'} has no data block"):
        main(["verify-data", "--config", str(tmp_path / "run.yaml")])


def test_bad_data_arguments_name_their_origin():
    block = {"class_path": "segfm.data.NpzDataModule", "init_args": {"root": "x", "mode": "3d"}}
    with pytest.raises(ConfigError, match=r"^--data: not a valid data module .*mode"):
        verify_data_command(block)


def test_help_lists_verify_data_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["verify-data", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for option in ("--data", "--config", "--max_cases", "--strict"):
        assert option in out


def test_instance_and_prompt_rules_of_npz(npz_root, tmp_path):
    root = shutil.copytree(npz_root, tmp_path / "cvpr")
    prompts = json.loads((root / "class_prompts.json").read_text())
    prompts["PET_Lesion"]["2"] = ["Other lesion"]  # instance dataset with two classes
    del prompts["MR_Brain"]  # a dataset folder without prompts
    (root / "class_prompts.json").write_text(json.dumps(prompts))
    report = NpzDataModule(str(root)).verify()
    messages = [f"{p.file}: {p.message}" for p in report.errors]
    assert any("'PET_Lesion' has 2 classes" in m for m in messages), messages
    assert any(m.startswith(f"{root / 'MR_Brain'}: has no entry") for m in messages), messages
