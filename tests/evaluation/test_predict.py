"""Predict's prompts from a clicks file and the prediction writer."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from segfm.errors import DataError
from segfm.evaluation.predict import ClicksFile, PredictionWriter
from segfm.sample import ClassInfo

CLASSES = {1: ClassInfo("liver"), 2: ClassInfo("spleen")}


def _file(tmp_path: Path, content: dict) -> str:
    path = tmp_path / "clicks.json"
    path.write_text(json.dumps(content))
    return str(path)


def test_clicks_by_id_or_name_and_a_box(tmp_path: Path) -> None:
    path = _file(
        tmp_path,
        {"a": {"1": {"fg": [[2, 3, 4]], "bg": [[1, 1, 1]]}, "spleen": {"box": [1, 2, 3, 5, 6, 7]}}},
    )
    prompts = ClicksFile(path).prompts("a", CLASSES, {}, (8, 8, 8))
    assert prompts is not None and set(prompts) == {1, 2}
    assert prompts[1].fg == [(2, 3, 4)] and prompts[1].bg == [(1, 1, 1)] and prompts[1].box is None
    box = prompts[2].box
    assert box == {
        "z_min": 1,
        "z_max": 5,
        "z_mid": 3,
        "z_mid_x_min": 3,
        "z_mid_y_min": 2,
        "z_mid_x_max": 7,
        "z_mid_y_max": 6,
    }
    assert ClicksFile(path).prompts("b", CLASSES, {}, (8, 8, 8)) is None


def test_points_move_through_the_affines(tmp_path: Path) -> None:
    path = _file(tmp_path, {"a": {"1": {"fg": [[2, 4, 6]]}}})
    source = np.diag([1.0, 1.0, 1.0, 1.0])  # (x, y, z) voxels of 1 mm
    resampled = np.diag([2.0, 2.0, 2.0, 1.0])  # 2 mm: indices halve
    meta = {"source_affine": source, "affine": resampled}
    prompts = ClicksFile(path).prompts("a", CLASSES, meta, (8, 8, 8))
    assert prompts is not None and prompts[1].fg == [(1, 2, 3)]


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ({"a": {"kidney": {"fg": [[1, 1, 1]]}}}, "does not know"),
        ({"a": {"1": {"fg": [[9, 1, 1]]}}}, "outside the image"),
    ],
)
def test_bad_clicks_name_the_problem(tmp_path: Path, content: dict, match: str) -> None:
    with pytest.raises(DataError, match=match):
        ClicksFile(_file(tmp_path, content)).prompts("a", CLASSES, {}, (8, 8, 8))


def test_writer_writes_predictions_and_the_first_overlays(tmp_path: Path) -> None:
    writer = PredictionWriter(tmp_path, save_predictions=True, num_overlays=1)
    seg = torch.zeros(4, 8, 8, dtype=torch.long)
    seg[1:3, 2:5, 2:5] = 2
    for case in ("x/a", "b"):
        writer.write(case, seg, torch.rand(4, 8, 8), seg, [1.0] * 3, {}, CLASSES)
    assert nib.load(tmp_path / "predictions" / "x" / "a.nii.gz").shape == (8, 8, 4)
    assert (tmp_path / "predictions" / "b.nii.gz").is_file()
    assert [p.name for p in (tmp_path / "overlays").iterdir()] == ["x_a_z001.png"]
