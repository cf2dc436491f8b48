"""SegVol from the command line: fit, the text protocol (its own test) and predict, export."""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from data_tools.tiny_clip import write_tiny_clip
from segfm.checkpoints.segvol import load_official
from segfm.cli import main
from tests.data.m3d_seg.data import BOXES, CODES, SHAPE, SPACING, TEST, build

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "tests" / "conf" / "segvol_m3d_seg.yaml"


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_fit_then_zoom_out_zoom_in_test_and_predict(tmp_path: Path) -> None:
    root = build(tmp_path / "data")
    clip = write_tiny_clip(tmp_path / "clip")
    common = [
        "--config", str(CONFIG),
        "--data.init_args.root", str(root),
        "--model.init_args.clip_dir", str(clip),
        "--trainer.logger.init_args.save_dir", str(tmp_path),
        "--trainer.logger.init_args.version", "run",
    ]  # fmt: skip
    main(["fit", *common])
    run = tmp_path / "lightning_logs" / "run"
    ckpt = sorted((run / "checkpoints").glob("*.ckpt"))[-1]
    state = torch.load(ckpt, weights_only=True, map_location="cpu")["state_dict"]
    official = load_official(ckpt.with_suffix(".pth"))  # SegVol_v1.pth layout beside it
    assert set(official) == {k.removeprefix("model.") for k in state}
    for key, value in official.items():
        assert torch.equal(value, state["model." + key])

    # SegVol's own test (protocol native): the text protocol, zoom-out-zoom-in of every
    # labelled class prompted by its name; the volumes (24 x 36 x 40) are larger than the
    # 16 x 32 x 32 window in every axis
    main(["test", *common, "--ckpt_path", str(ckpt)])
    rows = _rows(run / "protocol_text_classes.csv")
    expected = {
        (f"{code}/{case}", str(c), CODES[code][c - 1])
        for code, cases in TEST.items()
        for case in cases
        for c in BOXES[code][case]
    }
    assert {(r["case"], r["class_id"], r["class_name"]) for r in rows} == expected
    for r in rows:
        assert r["prompt"] == r["class_name"]
        for key in ("dsc", "nsd"):
            assert 0.0 <= float(r[key]) <= 1.0
    cases = _rows(run / "protocol_text_cases.csv")
    assert len(cases) == sum(len(c) for c in TEST.values())
    for code, cases in TEST.items():
        for case in cases:
            pred = nib.load(run / "predictions" / code / f"{case}.nii.gz")
            assert pred.shape == SHAPE  # the stored (X, Y, Z) grid
            if code == "0000":  # its json gives the affine
                np.testing.assert_allclose(pred.affine, np.diag([*SPACING, 1.0]), atol=1e-6)
            labels = set(np.unique(np.asarray(pred.dataobj)).tolist())
            assert labels <= {0, *BOXES[code][case]}
    assert list((run / "overlays").glob("*.png"))

    # predict from text, into a fresh folder
    out = tmp_path / "predict"
    main(["predict", *common, "--ckpt_path", str(ckpt), "--model.init_args.output_dir", str(out)])
    written = sorted(
        p.relative_to(out / "predictions") for p in (out / "predictions").rglob("*.nii.gz")
    )
    assert [str(p) for p in written] == sorted(f"{c}/{k[0]}.nii.gz" for c, k in TEST.items())
