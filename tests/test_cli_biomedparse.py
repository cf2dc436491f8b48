"""BiomedParse from the command line: fit on npz slices, then the text protocol on volumes."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from segfm.cli import main

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "tests" / "conf" / "biomedparse_npz.yaml"


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_fit_then_text_protocol(npz_root: Path, tmp_path: Path) -> None:
    common = [
        "--config",
        str(CONFIG),
        "--data.init_args.root",
        str(npz_root),
        "--trainer.logger.init_args.save_dir",
        str(tmp_path),
        "--trainer.logger.init_args.version",
        "run",
    ]
    main(["fit", *common])
    run = tmp_path / "lightning_logs" / "run"
    ckpt = sorted((run / "checkpoints").glob("*.ckpt"))[-1]
    twin = torch.load(ckpt.with_suffix(".pth"), weights_only=True, map_location="cpu")
    state = torch.load(ckpt, weights_only=True, map_location="cpu")["state_dict"]
    assert set(twin["state_dict"]) == {k for k in state if k.startswith("model.")}

    main(["test", *common, "--ckpt_path", str(ckpt)])
    cases = _rows(run / "protocol_text_cases.csv")
    assert cases
    instance = [r for r in cases if r["instance"] == "True"]
    semantic = [r for r in cases if r["instance"] != "True"]
    assert instance and semantic
    for r in semantic:
        assert 0.0 <= float(r["dsc"]) <= 1.0
    for r in instance:
        assert 0.0 <= float(r["f1"]) <= 1.0
    segs = sorted((run / "predictions").rglob("*.npz"))
    assert segs
    for path in segs:
        seg = np.load(path)["segs"]
        assert seg.ndim == 3
        if "PET_Lesion" in str(path):  # instance dataset: one id per 6-connected component
            components, n = ndimage.label(seg > 0, ndimage.generate_binary_structure(3, 1))
            assert len(np.unique(seg[seg > 0])) == n
            for i in range(1, n + 1):
                assert len(np.unique(seg[components == i])) == 1
