import csv
import datetime
import io
import json
import math
import pickle
import zipfile

import numpy as np
import pytest

from segfm.data.io.nifti import write_nifti
from segfm.errors import DataError
from segfm.evaluation.folder_scores import score_folders
from segfm.evaluation.scoring import (
    LoadedCase,
    load_case,
    pair_cases,
    resolve_protocol,
    score_case,
)

SPACING = (2.0, 1.0, 1.0)


def two_classes():
    gt = np.zeros((8, 16, 16), np.uint8)
    gt[1:4, 2:8, 2:8] = 1  # 108 voxels
    gt[5:8, 9:15, 9:15] = 2  # 108 voxels
    return gt


def three_instances():
    gt = np.zeros((6, 20, 20), np.uint16)
    gt[1:4, 1:5, 1:5], gt[1:4, 10:14, 1:5], gt[1:4, 1:5, 10:14] = 1, 2, 3
    return gt


def prompts(instance, **names):
    return np.array({**names, "instance_label": instance}, dtype=object)


def read_rows(path):
    return list(csv.DictReader(path.read_text().splitlines()))


def read_csv(path):
    return {r["case"]: r for r in read_rows(path)}


@pytest.fixture
def interactive(tmp_path):
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir(), pred_dir.mkdir()
    gt = two_classes()
    for name in ("same", "half", "lost"):
        np.savez_compressed(gt_dir / f"{name}.npz", gts=gt, spacing=np.array(SPACING))
    np.savez_compressed(pred_dir / "same.npz", segs=gt)
    np.savez_compressed(pred_dir / "half.npz", segs=np.where(gt == 2, 0, gt))
    np.savez_compressed(pred_dir / "stray.npz", segs=gt)  # no ground truth of this name
    return pred_dir, gt_dir


def test_pair_cases(interactive):
    pred_dir, gt_dir = interactive
    pairs, orphans = pair_cases(pred_dir, gt_dir)
    assert [(p.name, p.pred.name if p.pred else None) for p in pairs] == [
        ("half", "half.npz"),
        ("lost", None),
        ("same", "same.npz"),
    ]
    assert [p.name for p in orphans] == ["stray.npz"]


def test_pair_cases_errors(tmp_path, interactive):
    pred_dir, gt_dir = interactive
    with pytest.raises(DataError, match=r"nowhere does not exist.*--pred"):
        pair_cases(tmp_path / "nowhere", gt_dir)
    with pytest.raises(DataError, match="--gt"):
        pair_cases(pred_dir, tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no prediction in"):
        pair_cases(tmp_path / "empty", gt_dir)
    with pytest.raises(DataError, match=r"no \.npz"):
        pair_cases(pred_dir, tmp_path / "empty")


def test_evaluate_npz_interactive_known_answers(interactive, tmp_path):
    pred_dir, gt_dir = interactive
    out = tmp_path / "out"
    with pytest.warns(UserWarning, match=r"stray\.npz: no ground truth"):
        report = score_folders(str(pred_dir), str(gt_dir), str(out))
    rows = read_csv(out / "cases.csv")
    assert float(rows["same"]["dsc"]) == 1.0 and float(rows["same"]["nsd"]) == 1.0
    # class 2 missing, both classes 108 voxels: DSC (1 + 0) / 2; NSD (1 + 0) / 2 (0.5 > 0.2)
    assert float(rows["half"]["dsc"]) == 0.5 and float(rows["half"]["nsd"]) == 0.5
    assert float(rows["lost"]["dsc"]) == 0.0 and rows["lost"]["missing"] == "True"
    assert {r["protocol"] for r in rows.values()} == {"interactive"}
    assert "f1" not in rows["same"]  # no instance case: no instance columns
    classes = read_rows(out / "classes.csv")
    assert len(classes) == 6
    half = {r["class_id"]: float(r["dsc"]) for r in classes if r["case"] == "half"}
    assert half == {"1": 1.0, "2": 0.0}
    summary = json.loads((out / "cases_summary.json").read_text())
    assert summary["dsc"]["mean"] == pytest.approx(0.5)
    assert summary["missing_predictions"] == 1 and summary["missing"] == ["lost"]
    assert summary["unpaired_predictions"] == [str(pred_dir / "stray.npz")]
    assert report["cases"] == 3
    assert (
        "Missing predictions (scored as empty): 1: lost" in (out / "cases_summary.md").read_text()
    )


def test_evaluate_text_track_spacing_and_prompts_from_images(tmp_path):
    gt_dir, pred_dir, img_dir = tmp_path / "gt", tmp_path / "pred", tmp_path / "imgs"
    for d in (gt_dir, pred_dir, img_dir):
        d.mkdir()
    gt = two_classes()
    np.savez_compressed(gt_dir / "ct.npz", gts=gt)  # no spacing: comes from the image npz
    wrong = np.where(gt == 2, 0, gt)
    np.savez_compressed(pred_dir / "ct.npz", segs=wrong)
    # class 2 is not prompted, class 7 is prompted but absent: only class 1 is scored
    np.savez(
        img_dir / "ct.npz",
        imgs=gt,
        spacing=np.array(SPACING),
        text_prompts=prompts(0, **{"1": "liver", "7": "spleen"}),
    )
    cells = three_instances()
    np.savez_compressed(gt_dir / "cells.npz", gts=cells)
    found = np.zeros_like(cells)
    found[cells == 1], found[cells == 2] = 1, 1  # binary: two of three instances, exact
    np.savez_compressed(pred_dir / "cells.npz", segs=found.astype(np.uint8))
    np.savez(img_dir / "cells.npz", imgs=cells, text_prompts=prompts(1, **{"1": "cell"}))
    report = score_folders(str(pred_dir), str(gt_dir), str(tmp_path / "out"), images=str(img_dir))
    rows = read_csv(tmp_path / "out" / "cases.csv")
    assert rows["ct"]["protocol"] == "semantic"
    assert float(rows["ct"]["dsc"]) == 1.0 and float(rows["ct"]["nsd"]) == 1.0
    assert rows["ct"]["classes"] == "1" and rows["ct"]["f1"] == "nan"
    assert rows["cells"]["protocol"] == "instance"
    assert (rows["cells"]["tp"], rows["cells"]["fp"], rows["cells"]["fn"]) == ("2", "0", "1")
    assert float(rows["cells"]["f1"]) == pytest.approx(2 * 2 / (2 * 2 + 0 + 1))
    assert float(rows["cells"]["dsc_tp"]) == 1.0 and rows["cells"]["dsc"] == "nan"
    classes = read_rows(tmp_path / "out" / "classes.csv")
    assert [(r["case"], r["class_id"], r["class_name"]) for r in classes] == [("ct", "1", "liver")]
    assert report["protocols"] == {"instance": 1, "semantic": 1}
    assert report["f1"]["n"] == 1 and report["dsc"]["n"] == 1


def test_protocol_override_and_missing_spacing(tmp_path):
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir(), pred_dir.mkdir()
    cells = three_instances()
    np.savez_compressed(gt_dir / "cells.npz", gts=cells)
    np.savez_compressed(pred_dir / "cells.npz", segs=cells)
    with pytest.raises(DataError, match=r"cells\.npz: no 3-value spacing.*--images"):
        score_folders(str(pred_dir), str(gt_dir), str(tmp_path / "out"))
    # instance scoring needs no spacing
    report = score_folders(str(pred_dir), str(gt_dir), str(tmp_path / "out"), protocol="instance")
    assert report["f1"]["mean"] == 1.0


def test_npz_errors(tmp_path):
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir(), pred_dir.mkdir()
    np.savez_compressed(gt_dir / "a.npz", gts=two_classes(), spacing=np.array(SPACING))
    np.savez_compressed(pred_dir / "a.npz", seg=two_classes())
    (pair,), _ = pair_cases(pred_dir, gt_dir)
    with pytest.raises(DataError, match=r"a\.npz has no 'segs' array \(it has seg\)"):
        load_case(pair)
    np.savez_compressed(pred_dir / "a.npz", segs=two_classes()[:, :8])
    with pytest.raises(DataError, match="prediction shape"):
        load_case(pair)
    (pred_dir / "a.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="cannot read"):
        load_case(pair)


def test_text_prompts_are_read_without_running_pickled_code(tmp_path):
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir(), pred_dir.mkdir()
    gt = two_classes()
    np.savez(
        gt_dir / "a.npz",
        gts=gt,
        spacing=np.array(SPACING),
        text_prompts=prompts(np.int64(1), **{"1": "x"}),
    )
    np.savez_compressed(pred_dir / "a.npz", segs=gt)
    (pair,), _ = pair_cases(pred_dir, gt_dir)
    case = load_case(pair)
    assert case.prompts == {"1": "x", "instance_label": 1}
    assert case.spacing == SPACING
    assert resolve_protocol("auto", case.prompts) == "instance"
    assert resolve_protocol("semantic", case.prompts) == "semantic"
    assert resolve_protocol("auto", None) == "interactive"
    # any other global (here datetime.date) is refused instead of being called
    evil = np.array({"1": datetime.date(2020, 1, 1), "instance_label": 0}, dtype=object)
    np.savez(gt_dir / "a.npz", gts=gt, text_prompts=evil)
    with pytest.raises(DataError, match="refusing to unpickle datetime"):
        load_case(pair)


def test_text_prompts_written_by_numpy_1(tmp_path):
    # numpy 1.x (the challenge's files) pickles its globals under numpy.core.multiarray
    value = prompts(1, **{"2": "nuclei"})
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, np.lib.format.header_data_from_array_1_0(value))
    data = pickle.dumps(value, protocol=3)  # protocol 3 names globals as plain text
    data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray" in data
    member = buf.getvalue() + data
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir(), pred_dir.mkdir()
    np.savez(gt_dir / "a.npz", gts=three_instances())
    with zipfile.ZipFile(gt_dir / "a.npz", "a") as zf:
        zf.writestr("text_prompts.npy", member)
    np.savez_compressed(pred_dir / "a.npz", segs=three_instances())
    (pair,), _ = pair_cases(pred_dir, gt_dir)
    assert load_case(pair).prompts == {"2": "nuclei", "instance_label": 1}


def test_score_case_counts():
    gt = two_classes()
    row, classes = score_case(LoadedCase(np.zeros_like(gt), gt, SPACING, None), "interactive")
    assert row == {"classes": 2, "dsc": 0.0, "nsd": 0.0}
    assert [c["class_id"] for c in classes] == [1, 2]
    row, classes = score_case(LoadedCase(gt, gt, None, None), "instance")
    assert (row["tp"], row["f1"], classes) == (2, 1.0, [])


def affine(spacing_zyx, shift=0.0):
    return np.diag([*reversed(spacing_zyx), 1.0]) + np.pad([[shift]], ((0, 3), (3, 0)))


def test_evaluate_nifti(tmp_path):
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt = two_classes()
    write_nifti(gt_dir / "a.nii.gz", gt, affine(SPACING))
    write_nifti(gt_dir / "b.nii.gz", gt, affine(SPACING))
    write_nifti(pred_dir / "a.nii.gz", gt, affine(SPACING))
    # half: class 2 missing; written with a shifted origin -> warned, still scored
    write_nifti(pred_dir / "b.nii.gz", np.where(gt == 2, 0, gt), affine(SPACING, shift=5.0))
    with pytest.warns(UserWarning, match=r"b\.nii\.gz: affine differs"):
        score_folders(str(pred_dir), str(gt_dir), str(tmp_path / "out"))
    rows = read_csv(tmp_path / "out" / "cases.csv")
    assert float(rows["a"]["dsc"]) == 1.0 and float(rows["a"]["nsd"]) == 1.0
    assert float(rows["b"]["dsc"]) == 0.5 and float(rows["b"]["nsd"]) == 0.5
    (pair, _), _ = pair_cases(pred_dir, gt_dir)
    assert load_case(pair).spacing == SPACING
    write_nifti(pred_dir / "a.nii.gz", gt[:, :, :8], affine(SPACING))
    with pytest.raises(DataError, match="prediction shape"):
        score_folders(str(pred_dir), str(gt_dir), str(tmp_path / "out"))


def test_case_without_classes_is_left_out_of_the_mean(tmp_path):
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir(), pred_dir.mkdir()
    np.savez_compressed(gt_dir / "a.npz", gts=np.zeros((4, 4, 4), np.uint8), spacing=SPACING)
    np.savez_compressed(pred_dir / "a.npz", segs=np.zeros((4, 4, 4), np.uint8))
    report = score_folders(str(pred_dir), str(gt_dir), str(tmp_path / "out"))
    # no class in the ground truth: nothing to average, the case is NaN and left out of the mean
    assert report["dsc"]["n"] == 0 and math.isnan(report["dsc"]["mean"])


# --- all_segs: per-step scores, AUC and final values of CVPR25_iter_eval.py ------------------


def _steps_of_two_classes():
    """Predictions with known scores against two_classes() (two cuboids of 108 voxels)."""
    gt = two_classes()
    nothing = np.zeros_like(gt)
    sliver = np.zeros_like(gt)
    sliver[1:2, 2:4, 2:8] = 1  # 12 voxels of class 1: Dice 24 / 120 = 0.2, class 2 0
    one = np.where(gt == 1, 1, 0).astype(np.uint8)  # class 1 exact, class 2 missed
    return gt, nothing, sliver, one


def test_evaluate_all_segs_per_step_auc_and_final(tmp_path, capsys):
    from segfm.commands.evaluate import evaluate

    gt, nothing, sliver, one = _steps_of_two_classes()
    gt_dir, pred_dir, out = tmp_path / "gt", tmp_path / "pred", tmp_path / "out"
    gt_dir.mkdir(), pred_dir.mkdir()
    for name in ("boxed", "unboxed", "plain"):
        np.savez_compressed(gt_dir / f"{name}.npz", gts=gt, spacing=np.array(SPACING))
    # 6 steps. Case-mean DSC: 0; (0.2 + 0) / 2 = 0.1; (1 + 0) / 2 = 0.5 twice; 1 twice.
    # NSD: 0 (DSC <= 0.2, although class 1 alone has surface overlap); 0 again (the 0.2 rule
    # is on the case mean 0.1); (1 + 0) / 2 = 0.5 twice; 1 twice.
    boxed = np.stack([nothing, sliver, one, one, gt, gt])
    np.savez_compressed(pred_dir / "boxed.npz", segs=gt, all_segs=boxed)
    # 5 entries: no boxes, the official step 1 is DSC 0 / NSD 0; then 0.5, 0.5, 1, 1, 1
    unboxed = np.stack([one, one, gt, gt, gt])
    np.savez_compressed(pred_dir / "unboxed.npz", segs=gt, all_segs=unboxed)
    np.savez_compressed(pred_dir / "plain.npz", segs=one)  # no all_segs: no step scores
    report = evaluate(str(pred_dir), str(gt_dir), str(out))
    rows = read_csv(out / "cases.csv")
    b, u, p = rows["boxed"], rows["unboxed"], rows["plain"]
    dsc_b = [0.0, 0.1, 0.5, 0.5, 1.0, 1.0]
    nsd_b = [0.0, 0.0, 0.5, 0.5, 1.0, 1.0]
    dsc_u = nsd_u = [0.0, 0.5, 0.5, 1.0, 1.0, 1.0]
    for k in range(6):
        assert float(b[f"dsc_{k + 1}"]) == pytest.approx(dsc_b[k], abs=1e-4)
        assert float(b[f"nsd_{k + 1}"]) == pytest.approx(nsd_b[k], abs=1e-4)
        assert float(u[f"dsc_{k + 1}"]) == pytest.approx(dsc_u[k], abs=1e-4)
        assert float(u[f"nsd_{k + 1}"]) == pytest.approx(nsd_u[k], abs=1e-4)
        assert p[f"dsc_{k + 1}"] == "nan"
    # trapezoids over the last 5 steps at x = 0..4
    auc_dsc_b = (0.1 + 0.5) / 2 + (0.5 + 0.5) / 2 + (0.5 + 1) / 2 + (1 + 1) / 2  # 2.55
    auc_nsd_b = (0.0 + 0.5) / 2 + (0.5 + 0.5) / 2 + (0.5 + 1) / 2 + (1 + 1) / 2  # 2.5
    auc_u = (0.5 + 0.5) / 2 + (0.5 + 1) / 2 + (1 + 1) / 2 + (1 + 1) / 2  # 3.25
    assert float(b["dsc_auc"]) == pytest.approx(auc_dsc_b, abs=1e-4)
    assert float(b["nsd_auc"]) == pytest.approx(auc_nsd_b, abs=1e-4)
    assert float(u["dsc_auc"]) == pytest.approx(auc_u, abs=1e-4)
    assert float(u["nsd_auc"]) == pytest.approx(auc_u, abs=1e-4)
    assert float(b["dsc_final"]) == 1.0 and float(u["nsd_final"]) == 1.0
    assert float(p["dsc"]) == 0.5 and p["dsc_auc"] == "nan"
    # the summary: means over the two cases with all_segs
    assert report["dsc_auc"]["n"] == 2
    assert report["dsc_auc"]["mean"] == pytest.approx((auc_dsc_b + auc_u) / 2)
    assert report["dsc_2"]["mean"] == pytest.approx((0.1 + 0.5) / 2)
    printed = capsys.readouterr().out
    assert f"dsc_auc   {(auc_dsc_b + auc_u) / 2:.4f}" in printed
    assert "dsc by step 1..6: 0.0000 0.3000 0.5000 0.7500 1.0000 1.0000  (n=2)" in printed
    assert "nsd by step 1..6: 0.0000 0.2500 0.5000 0.7500 1.0000 1.0000  (n=2)" in printed


def test_all_segs_of_the_wrong_shape_is_refused(tmp_path):
    gt = two_classes()
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir(), pred_dir.mkdir()
    np.savez_compressed(gt_dir / "a.npz", gts=gt, spacing=np.array(SPACING))
    np.savez_compressed(pred_dir / "a.npz", segs=gt, all_segs=gt)  # not stacked
    (pair,), _ = pair_cases(pred_dir, gt_dir)
    with pytest.raises(DataError, match="all_segs has shape"):
        load_case(pair)
