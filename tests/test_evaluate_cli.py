"""``segfm evaluate`` driven in-process like a user would type it."""

import csv

import numpy as np
import pytest

from segfm.cli import main
from segfm.errors import DataError


def test_evaluate_help_lists_the_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for option in ("--pred", "--gt", "--output", "--tolerance", "--protocol", "--images"):
        assert option in out
    assert "auto,interactive,semantic,instance" in out


def test_evaluate_end_to_end(tmp_path, capsys):
    gt_dir, pred_dir, out = tmp_path / "gt", tmp_path / "pred", tmp_path / "out"
    gt_dir.mkdir(), pred_dir.mkdir()
    gt = np.zeros((6, 12, 12), np.uint8)
    gt[1:3, 1:5, 1:5], gt[4:6, 7:11, 7:11] = 1, 2  # 32 voxels each
    for name, pred in (("perfect", gt), ("one_class", np.where(gt == 1, 1, 0))):
        np.savez_compressed(gt_dir / f"{name}.npz", gts=gt, spacing=np.array([3.0, 0.7, 0.7]))
        np.savez_compressed(pred_dir / f"{name}.npz", segs=pred.astype(np.uint8))
    main(["evaluate", "--pred", str(pred_dir), "--gt", str(gt_dir), "--output", str(out)])
    rows = {r["case"]: r for r in csv.DictReader((out / "cases.csv").read_text().splitlines())}
    assert (rows["perfect"]["dsc"], rows["perfect"]["nsd"]) == ("1.0000", "1.0000")
    assert (rows["one_class"]["dsc"], rows["one_class"]["nsd"]) == ("0.5000", "0.5000")
    assert (out / "classes.csv").is_file() and (out / "cases_summary.md").is_file()
    printed = capsys.readouterr().out
    assert "scored 2 cases (interactive 2)" in printed
    assert "dsc       0.7500 ± 0.2500  (n=2)" in printed


def test_missing_folder_is_one_line(tmp_path, capsys):
    (tmp_path / "gt").mkdir()
    with pytest.raises(DataError):
        main(
            [
                "evaluate",
                "--pred",
                str(tmp_path / "nowhere"),
                "--gt",
                str(tmp_path / "gt"),
                "--output",
                str(tmp_path / "out"),
            ]
        )
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0] == (
        f"segfm: error: {tmp_path / 'nowhere'} does not exist or is not a folder; check --pred"
    )
    assert len(err) == 2 and "--debug" in err[1]
    assert not (tmp_path / "out").exists()
