"""Validation during fit scores what the test scores: same cases, same weights, same numbers."""

import csv
import json
from pathlib import Path

import pytest

from segfm.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "tests" / "conf" / "medsam_npy_slices.yaml")


def _last_row_with(path: Path, key: str) -> dict[str, str]:
    rows = [r for r in csv.DictReader(path.open()) if r.get(key)]
    return rows[-1]


def test_validate_and_test_give_the_same_protocol_scores(npy_slices_root, tmp_path):
    train = ["CT_synth_000", "CT_synth_001", "CT_synth_002"]
    held = ["CT_synth_003", "CT_synth_004"]
    splits = {}
    for name, parts in (("val", {"val": held, "test": []}), ("test", {"val": [], "test": held})):
        splits[name] = tmp_path / f"{name}.json"
        splits[name].write_text(json.dumps({"train": train, **parts}))
    common = [
        "--config",
        TINY,
        "--data.init_args.root",
        str(npy_slices_root),
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.logger.init_args.save_dir",
        str(tmp_path),
    ]
    val_split = ["--data.init_args.split_file", str(splits["val"])]
    main(["fit", *common, *val_split, "--trainer.logger.init_args.version", "fit"])
    ckpt = next((tmp_path / "lightning_logs" / "fit" / "checkpoints").glob("*.ckpt"))
    fitted = _last_row_with(tmp_path / "lightning_logs" / "fit" / "metrics.csv", "val_score")
    assert {"val_dsc", "val_nsd", "val_dice"} <= {k for k, v in fitted.items() if v}
    runs = {}
    for command in ("validate", "test"):
        version = command
        main(
            [
                command,
                *common,
                "--ckpt_path",
                str(ckpt),
                "--trainer.logger.init_args.version",
                version,
            ]
        )
        runs[command] = tmp_path / "lightning_logs" / version
    validated = _last_row_with(runs["validate"] / "metrics.csv", "val_score")
    summary = json.loads((runs["test"] / "protocol_interactive_cases_summary.json").read_text())
    assert float(validated["val_dsc"]) == pytest.approx(summary["dsc_final"]["mean"], abs=1e-6)
    assert float(validated["val_nsd"]) == pytest.approx(summary["nsd_final"]["mean"], abs=1e-6)
    assert float(validated["val_score"]) == pytest.approx(summary["dsc_final"]["mean"], abs=1e-6)
    # the fit's last validation used the same weights as the checkpoint it saved last
    assert float(fitted["val_dsc"]) == pytest.approx(float(validated["val_dsc"]), abs=1e-6)


def test_validation_without_the_protocol_logs_only_the_loss_side(npy_slices_root, tmp_path):
    main(
        [
            "validate",
            "--config",
            TINY,
            "--data.init_args.root",
            str(npy_slices_root),
            "--model.init_args.evaluation.validate",
            "false",
            "--trainer.logger.init_args.save_dir",
            str(tmp_path),
            "--trainer.logger.init_args.version",
            "v",
        ]
    )
    row = _last_row_with(tmp_path / "lightning_logs" / "v" / "metrics.csv", "val_dice")
    assert "val_score" not in {k for k, v in row.items() if v}
