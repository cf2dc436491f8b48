"""SAM-Med3D from the command line: fit, N-click test, predict from a clicks file, export."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from segfm.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY3D = ROOT / "tests" / "conf" / "sam_med3d_nnunet.yaml"


def _source_image(root: Path, case: str) -> Path:
    for folder in ("imagesTr", "imagesTs"):
        path = root / folder / f"{case}_0000.nii.gz"
        if path.is_file():
            return path
    raise AssertionError(f"no source image for {case}")


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_fit_n_click_test_predict_export(nnunet_root: Path, tmp_path: Path) -> None:
    common = [
        "--config",
        str(TINY3D),
        "--data.init_args.root",
        str(nnunet_root),
        "--data.init_args.cache_dir",
        str(tmp_path / "cache"),
        "--trainer.logger.init_args.save_dir",
        str(tmp_path),
        "--trainer.logger.init_args.version",
        "run",
    ]
    main(["fit", *common])
    run = tmp_path / "lightning_logs" / "run"
    ckpts = sorted((run / "checkpoints").glob("*.ckpt"))
    assert ckpts, "fit wrote no checkpoint"
    ckpt = ckpts[-1]
    twin = torch.load(ckpt.with_suffix(".pth"), weights_only=True, map_location="cpu")
    state = torch.load(ckpt, weights_only=True, map_location="cpu")["state_dict"]
    assert set(twin["model_state_dict"]) == {k.removeprefix("model.") for k in state}

    # SAM-Med3D's own test: the interactive protocol with N clicks and no box
    clicks = 3
    main(["test", *common, "--ckpt_path", str(ckpt), "--model.init_args.evaluation.clicks", "3"])
    rows = _rows(run / "protocol_interactive_steps.csv")
    per_case = Counter(r["case"] for r in rows)
    assert per_case and set(per_case.values()) == {clicks}
    assert {r["prompt"] for r in rows} == {"click"}
    for r in rows:
        assert 0.0 <= float(r["dsc"]) <= 1.0 and 0.0 <= float(r["nsd"]) <= 1.0
    classes = _rows(run / "protocol_interactive_classes.csv")
    assert classes and all(r["clicks"][0] == "f" for r in classes)  # nothing predicted: a miss
    table = _rows(run / "protocol_interactive_cases.csv")
    for r in table:  # the score after every click, the last one the result
        assert [f"dsc_{k}" in r for k in range(1, clicks + 2)] == [True] * clicks + [False]
        assert float(r["dsc_final"]) == float(r[f"dsc_{clicks}"])
    cases = {r["case"] for r in table}
    assert cases == set(per_case)
    for case in cases:  # pasted back onto the source grid, with its affine
        pred = nib.load(run / "predictions" / f"{case}.nii.gz")
        source = nib.load(_source_image(nnunet_root, case))
        np.testing.assert_allclose(pred.affine, source.affine, atol=1e-5)
        assert pred.shape == source.shape[:3]
    assert list((run / "overlays").glob("*.png"))

    # predict without ground truth: one positive click per predict case from a file
    predict_cases = sorted(
        p.name.removesuffix("_0000.nii.gz") for p in (nnunet_root / "imagesTs").glob("*.nii.gz")
    )
    assert predict_cases
    given = {}
    for case in predict_cases:
        shape = nib.load(nnunet_root / "imagesTs" / f"{case}_0000.nii.gz").shape  # x, y, z
        centre = [s // 2 for s in reversed(shape[:3])]  # z, y, x
        given[case] = {"1": {"fg": [centre], "bg": []}}
    clicks_file = tmp_path / "clicks.json"
    clicks_file.write_text(json.dumps(given))
    out = tmp_path / "predict"
    main(
        [
            "predict",
            *common,
            "--ckpt_path",
            str(ckpt),
            "--model.init_args.evaluation.clicks_file",
            str(clicks_file),
            "--model.init_args.output_dir",
            str(out),
        ]
    )
    for case in predict_cases:
        pred = nib.load(out / "predictions" / f"{case}.nii.gz")
        source = nib.load(nnunet_root / "imagesTs" / f"{case}_0000.nii.gz")
        np.testing.assert_allclose(pred.affine, source.affine, atol=1e-5)
        assert pred.shape == source.shape[:3]
        assert set(np.unique(np.asarray(pred.dataobj))) <= {0, 1}

    exported = tmp_path / "sam_med3d_tiny.pth"
    main(["export", "--ckpt_path", str(ckpt), "--format", "sam_med3d", "--output", str(exported)])
    official = torch.load(exported, weights_only=True, map_location="cpu")["model_state_dict"]
    assert set(official) == {k.removeprefix("model.") for k in state}
    for k, v in official.items():
        assert torch.equal(v, state[f"model.{k}"])

    # the console script's wrapper is sys.exit(main()): a finished command must exit 0
    again = tmp_path / "again.pth"
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from segfm.cli import main; sys.exit(main())",
            "export",
            "--ckpt_path",
            str(ckpt),
            "--format",
            "sam_med3d",
            "--output",
            str(again),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert again.is_file()


def test_class_folder_layout_fit_and_test(class_folder_root: Path, tmp_path: Path) -> None:
    common = [
        "--config",
        str(TINY3D),
        "--data",
        "segfm.data.ClassFolderDataModule",
        "--data.init_args.root",
        str(class_folder_root),
        "--data.init_args.patch_size",
        "32",
        "--data.init_args.spacing",
        "3.0",
        "--data.init_args.num_workers",
        "0",
        "--data.init_args.test_fraction",
        "0.25",
        "--data.init_args.cache_dir",
        str(tmp_path / "cache"),
        "--trainer.logger.init_args.save_dir",
        str(tmp_path),
        "--trainer.logger.init_args.version",
        "run",
    ]
    main(["fit", *common])
    run = tmp_path / "lightning_logs" / "run"
    ckpt = sorted((run / "checkpoints").glob("*.ckpt"))[-1]
    main(["test", *common, "--ckpt_path", str(ckpt)])
    cases = [r["case"] for r in _rows(run / "protocol_interactive_cases.csv")]
    assert cases and all(c.count("/") == 2 for c in cases)  # class/dataset/case
    for case in cases:
        pred = nib.load(run / "predictions" / f"{case}.nii.gz")
        klass, dataset, name = case.split("/")
        source = nib.load(class_folder_root / klass / dataset / "imagesTr" / f"{name}.nii.gz")
        np.testing.assert_allclose(pred.affine, source.affine, atol=1e-5)
        assert pred.shape == source.shape[:3]
