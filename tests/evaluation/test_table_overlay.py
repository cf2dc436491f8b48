import json
import math

import numpy as np
import pytest
from PIL import Image

from segfm.evaluation import CaseTable, overlay, save_png
from segfm.evaluation.overlay import GAP, LINE, colour


def test_case_table_summary_and_files(tmp_path):
    t = CaseTable(["dsc", "nsd"])
    t.add(case="a", dsc=0.5, nsd=1.0)
    t.add(case="b", dsc=1.0, nsd=float("nan"))
    s = t.summary()
    assert s["dsc"]["mean"] == 0.75 and s["dsc"]["n"] == 2
    assert s["nsd"]["mean"] == 1.0 and s["nsd"]["n"] == 1
    assert math.isclose(s["dsc"]["std"], 0.25)
    paths = t.write(tmp_path, "test_cases")
    lines = paths["csv"].read_text().splitlines()
    assert lines[0] == "case,dsc,nsd" and lines[1] == "a,0.5000,1.0000"
    assert json.loads(paths["json"].read_text())["cases"] == 2
    assert "**0.7500**" in paths["markdown"].read_text()
    assert not list(tmp_path.glob(".*tmp*"))


def test_overlay_paints_classes_and_saves(tmp_path):
    image = np.linspace(0, 1, 32 * 32).reshape(32, 32)
    pred = np.zeros((32, 32), int)
    pred[8:16, 8:16] = 1
    ref = np.zeros((32, 32), int)
    ref[8:16, 10:18] = 2
    pic = overlay(image, pred, ref, {1: "liver", 2: "spleen"}, "case_a  DSC 0.500")
    assert pic.dtype == np.uint8 and pic.ndim == 3
    factor = 16  # 32 px upscaled to 512
    top, gap = GAP + LINE + GAP + LINE, GAP
    assert pic.shape[1] == 2 * 32 * factor + 3 * gap
    left = pic[top : top + 32 * factor, gap : gap + 32 * factor]
    right_x = gap + 32 * factor + gap
    right = pic[top : top + 32 * factor, right_x : right_x + 32 * factor]
    # nearest neighbour: every voxel is a block of factor x factor equal pixels
    assert (left[:factor, :factor] == left[0, 0]).all()
    # painted pixels differ from grey (r == g == b) in both panels, each in its class colour
    assert len(set(left[12 * factor, 14 * factor].tolist())) > 1  # reference: class 2
    assert len(set(right[12 * factor, 12 * factor].tolist())) > 1  # prediction: class 1
    assert len(set(left[0, 0].tolist())) == 1
    # the title and the panel labels are drawn text (dark pixels on white)
    assert (pic[: GAP + LINE] < 128).any() and (pic[GAP + LINE : top] < 128).any()
    # the legend shows both classes' colours
    legend = pic[top + 32 * factor :].reshape(-1, 3)
    for c in (1, 2):
        assert (legend == np.array(colour(c), np.uint8)).all(axis=1).any()
    path = save_png(pic, tmp_path / "o.png")
    assert np.array_equal(np.asarray(Image.open(path)), pic)


def test_overlay_of_a_prediction_alone(tmp_path):
    image = np.zeros((600, 700))
    pred = np.zeros((600, 700), int)
    pic = overlay(image, pred)
    assert pic.shape[1] == 700 + 2 * GAP  # wide enough already: not upscaled
    with pytest.raises(ValueError, match="reference shape"):
        overlay(image, pred, np.zeros((3, 3), int))
