import json
import math

import numpy as np
from PIL import Image

from segfm.evaluation import CaseTable, overlay, save_png


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
    pic = overlay(image, pred, ref)
    assert pic.shape == (32, 68, 3) and pic.dtype == np.uint8
    # a painted pixel differs from grey (r == g == b) on both panels
    assert len(set(pic[12, 12 + 36].tolist())) > 1
    assert len(set(pic[12, 14].tolist())) > 1
    assert len(set(pic[0, 0].tolist())) == 1
    path = save_png(pic, tmp_path / "o.png")
    assert np.array_equal(np.asarray(Image.open(path)), pic)
