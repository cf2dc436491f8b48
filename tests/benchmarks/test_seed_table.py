"""benchmarks/seed_table.py: one row per seed and the spread of each score."""

import json

import pytest

from benchmarks.seed_table import table


def _run(folder, seed, dsc, nsd):
    folder.mkdir()
    (folder / "config.yaml").write_text(f"seed_everything: {seed}\n")
    summary = {
        "cases": 3,
        "dsc_auc": {"mean": float("nan"), "n": 0},
        "dsc_final": {"mean": dsc, "n": 3},
        "nsd_final": {"mean": nsd, "n": 3},
    }
    (folder / "protocol_interactive_cases_summary.json").write_text(json.dumps(summary))
    return folder


def test_rows_and_spread(tmp_path):
    runs = [_run(tmp_path / "a", 1, 0.81, 0.90), _run(tmp_path / "b", 2, 0.84, 0.88)]
    lines = table(runs).splitlines()
    assert lines[0] == "| run | seed | dsc_final | nsd_final |"
    assert lines[2] == "| a | 1 | 0.8100 | 0.9000 |"
    assert lines[-1] == "| **spread** (max - min) | | 0.0300 | 0.0200 |"


def test_a_run_without_a_test_is_named(tmp_path):
    (tmp_path / "c").mkdir()
    with pytest.raises(SystemExit, match="c has no protocol"):
        table([tmp_path / "c"])
