"""The local official loop against a scripted ``predict.sh``: inputs written, steps scored."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from segfm.challenge.driver import DriverOptions, evaluate_submission

SHAPE = (4, 12, 12)
BOX = {"z_min": 0, "z_max": 3, "z_mid": 2, "z_mid_x_min": 0, "z_mid_y_min": 0,
       "z_mid_x_max": 5, "z_mid_y_max": 5}  # fmt: skip

# A submission that records each input it gets and answers: class 1 exactly, class 2 as a
# cube twice too big (only background clicks can fix it); at the run numbered SKIP it writes
# nothing. The runs are counted in a file beside the records.
FAKE = """
import os, shutil, sys
from pathlib import Path
import numpy as np
inputs, outputs = Path(os.environ["SEGFM_INPUTS"]), Path(os.environ["SEGFM_OUTPUTS"])
record = Path(os.environ["FAKE_RECORD"])
record.mkdir(exist_ok=True)
run = len(list(record.glob("*.npz"))) + 1
for case in sorted(inputs.glob("*.npz")):
    shutil.copy(case, record / f"{run}_{case.name}")
    if run == int(os.environ.get("FAKE_SKIP", "0")):
        continue
    gts = np.load(Path(os.environ["FAKE_GTS"]) / case.name)["gts"]
    segs = np.zeros(gts.shape, dtype=np.uint8)
    segs[:, 6:12, 6:12] = 2
    segs[gts == 1] = 1
    np.savez_compressed(outputs / case.name, segs=segs)
"""


def _truth() -> np.ndarray:
    gts = np.zeros(SHAPE, dtype=np.uint8)
    gts[:, 1:4, 1:4] = 1  # 36 voxels
    gts[:, 6:9, 6:9] = 2  # 36 voxels; the answer has 144
    return gts


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "fake.py").write_text(FAKE)
    (sub / "predict.sh").write_text('exec "$SEGFM_PYTHON" "$(dirname "$0")/fake.py"\n')
    images, gts = tmp_path / "images", tmp_path / "gts"
    images.mkdir()
    gts.mkdir()
    image = np.full(SHAPE, 100, dtype=np.uint8)
    spacing = np.array([2.0, 1.0, 1.0])
    np.savez_compressed(images / "boxed.npz", imgs=image, spacing=spacing, boxes=[BOX, BOX])
    np.savez_compressed(images / "bare.npz", imgs=image, spacing=spacing)
    for name in ("boxed", "bare"):
        np.savez_compressed(gts / f"{name}.npz", gts=_truth())
    monkeypatch.setenv("FAKE_GTS", str(gts))
    monkeypatch.setenv("FAKE_RECORD", str(tmp_path / "record"))
    return {"sub": sub, "images": images, "gts": gts, "record": tmp_path / "record"}


def _load(path: Path) -> dict:
    with np.load(path, allow_pickle=True) as npz:
        return {k: npz[k] for k in npz.files}


def test_official_loop_inputs_and_scores(setup: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "eval"
    tables = evaluate_submission(
        setup["sub"], setup["images"], out, setup["gts"], "interactive",
        DriverOptions(python=sys.executable),
    )  # fmt: skip
    rows = {r["case"]: r for r in tables["interactive"].rows}
    records = sorted(setup["record"].glob("*.npz"), key=lambda p: int(p.name.split("_")[0]))
    names = [p.name.split("_", 1)[1] for p in records]
    # cases run in sorted order: "bare" has no boxes, so 5 runs; "boxed" 6
    assert names == ["bare.npz"] * 5 + ["boxed.npz"] * 6
    bare = [_load(p) for p in records[:5]]
    boxed = [_load(p) for p in records[5:]]
    assert "boxes" not in bare[0] and "clicks" in bare[0]
    assert not bare[0]["prev_pred"].any()  # nothing predicted before the first click
    # the first click of the bare case: class 1 and class 2 are missed -> fg clicks
    assert [list(o) for o in bare[0]["clicks_order"]] == [["fg"], ["fg"]]
    assert "clicks" not in boxed[0] and "boxes" in boxed[0]
    step2 = boxed[1]
    # class 1 is perfect: no click, None in clicks_order; class 2 over-segmented: background
    assert [list(o) for o in step2["clicks_order"]] == [[None], ["bg"]]
    clicks = step2["clicks"].tolist()
    assert clicks[0] == {"fg": [], "bg": []} and len(clicks[1]["bg"]) == 1
    z, y, x = clicks[1]["bg"][0]
    assert _truth()[z, y, x] == 0 and 6 <= y < 12 and 6 <= x < 12
    answer = np.zeros(SHAPE, dtype=np.uint8)
    answer[:, 6:12, 6:12] = 2
    answer[_truth() == 1] = 1
    assert np.array_equal(step2["prev_pred"], answer)  # the previous output, as written
    assert len(boxed[-1]["clicks_order"][1]) == 5 and boxed[-1]["clicks"].tolist()[1]["fg"] == []
    # scores: class 1 Dice 1; class 2 Dice 2 * 36 / (36 + 144) = 0.4; mean 0.7 at every step
    dice = (1.0 + 2 * 36 / (36 + 144)) / 2
    r = rows["boxed.npz"]
    assert [r[f"dsc_{k}"] for k in range(1, 7)] == pytest.approx([dice] * 6)
    assert r["dsc_auc"] == pytest.approx(4 * dice) and r["dsc_final"] == pytest.approx(dice)
    b = rows["bare.npz"]
    assert b["dsc_1"] == 0.0 and b["nsd_1"] == 0.0 and b["seconds_1"] == 0.0
    assert b["dsc_auc"] == pytest.approx(4 * dice)
    with np.load(out / "predictions" / "bare.npz") as npz:
        assert npz["all_segs"].shape == (5, *SHAPE)  # no entry for the skipped box step
    assert (out / "interactive_metrics.csv").is_file()


def test_a_step_without_output_keeps_the_previous_one(
    setup: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("bare.npz",):
        (setup["images"] / name).unlink()
    monkeypatch.setenv("FAKE_SKIP", "3")  # the third run writes nothing
    tables = evaluate_submission(
        setup["sub"], setup["images"], tmp_path / "eval", setup["gts"], "interactive",
        DriverOptions(python=sys.executable),
    )  # fmt: skip
    (row,) = tables["interactive"].rows
    dice = (1.0 + 2 * 36 / (36 + 144)) / 2
    assert row["dsc_3"] == pytest.approx(dice)  # the output of step 2 is still in place


def test_a_first_step_without_output_scores_zero(
    setup: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (setup["images"] / "bare.npz").unlink()
    monkeypatch.setenv("FAKE_SKIP", "1")
    tables = evaluate_submission(
        setup["sub"], setup["images"], tmp_path / "eval", setup["gts"], "interactive",
        DriverOptions(python=sys.executable),
    )  # fmt: skip
    (row,) = tables["interactive"].rows
    assert row["dsc_1"] == 0.0 and row["dsc_2"] > 0.5
    second = _load(setup["record"] / "2_boxed.npz")
    assert not second["prev_pred"].any()  # the official loop passes zeros on
    assert [list(o) for o in second["clicks_order"]] == [["fg"], ["fg"]]
