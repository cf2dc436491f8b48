"""``python -m data_tools.prepare_embedding_data`` on tiny generated NIfTI files."""

import csv
import json

import nibabel as nib
import numpy as np

from data_tools.embedding_ops import body_mask, reorient
from data_tools.prepare_embedding_data import main
from segfm.data.io.nifti import read_nifti, write_nifti

SMALL = ["--min-object", "20", "--max-hole", "200", "--workers", "1"]
RAS = np.diag([1.5, 1.5, 3.0, 1.0])  # x to the right, y anterior, z superior (RAS+)


def _ct(shape=(10, 40, 40), seed=0):
    """An ellipse body (soft tissue with an air hole) and a speck of noise, in air."""
    rng = np.random.default_rng(seed)
    _, y, x = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    body = ((y - 20) / 12) ** 2 + ((x - 18) / 14) ** 2 < 1
    ct = np.where(body, 40 + rng.normal(0, 10, shape), -1000.0)
    ct[:, 19:21, 17:19] = -1000  # a small hole inside the body: filled
    ct[:, 2, 37] = 300  # a speck outside: removed
    return ct.astype(np.float32), body


def _rows(path):
    return list(csv.DictReader(path.open()))


def test_body_mask_fills_holes_and_drops_specks():
    ct, body = _ct()
    mask = body_mask(ct, -900, min_object=20, max_hole=200)
    assert mask[:, 20, 18].all() and not mask[:, 2, 37].any()
    assert (mask == body).mean() > 0.97


def test_reorient_to_lps_keeps_world_positions():
    ct, _ = _ct()
    lps, affine = reorient(ct, RAS)
    assert nib.aff2axcodes(affine) == ("L", "P", "S")
    # a voxel's world position is unchanged: x flips (40 - 1 - x), y flips, z stays
    world = RAS @ np.array([5, 7, 3, 1.0])
    moved = np.linalg.solve(affine, world)[:3]
    np.testing.assert_allclose(moved, [34, 32, 3])
    assert lps[3, 32, 34] == ct[3, 7, 5]


def test_intra_crops_resamples_and_resumes(tmp_path, capsys):
    src = tmp_path / "raw"
    for i in range(2):
        write_nifti(src / f"case{i}.nii.gz", _ct(seed=i)[0], RAS)
    out = tmp_path / "out"
    assert main(["intra", "--input", str(src), "--output", str(out), "--spacing", "3", *SMALL]) == 0
    rows = _rows(out / "lymphnode_filename.csv")
    assert [r["name"] for r in rows] == ["images/case0.nii.gz", "images/case1.nii.gz"]
    image, mask = read_nifti(out / rows[0]["name"]), read_nifti(out / rows[0]["mask"])
    assert image.spacing == (3.0, 3.0, 3.0) and image.array.shape == mask.array.shape
    assert nib.aff2axcodes(image.affine) == ("L", "P", "S")
    # cropped to the body (24 x 28 voxels of 1.5 mm + margins), not the 40 x 40 field of view
    assert image.array.shape[1] * 3 < 40 * 1.5 and mask.array.mean() > 0.5
    stamp = (out / rows[0]["name"]).stat().st_mtime_ns
    assert (
        main(["intra", "--input", str(src), "--output", str(out), "--index", "x.csv", *SMALL]) == 0
    )
    assert (out / rows[0]["name"]).stat().st_mtime_ns == stamp  # finished cases are skipped
    assert _rows(out / "x.csv") == rows
    assert "prepared 2 cases" in capsys.readouterr().out


def test_merge_labels(tmp_path):
    ct, body = _ct()
    for case in ("s0001", "s0002"):
        write_nifti(tmp_path / "ts" / case / "ct.nii.gz", ct, RAS)
        liver = np.zeros_like(body, dtype=np.uint8)
        liver[:, 15:25, 10:20] = 1
        spleen = np.zeros_like(liver)
        spleen[:, 20:28, 18:26] = 1  # overlaps the liver: the later organ wins
        write_nifti(tmp_path / "ts" / case / "segmentations" / "liver.nii.gz", liver, RAS)
        write_nifti(tmp_path / "ts" / case / "segmentations" / "spleen.nii.gz", spleen, RAS)
    out = tmp_path / "out"
    assert (
        main(["merge-labels", "--input", str(tmp_path / "ts"), "--output", str(out), *SMALL]) == 0
    )
    assert json.loads((out / "labels.json").read_text()) == {"1": "liver", "2": "spleen"}
    rows = _rows(out / "merge-labels_index.csv")
    label = read_nifti(out / rows[0]["label"])
    image = read_nifti(out / rows[0]["name"])
    assert label.array.shape == image.array.shape == (10, 40, 40)  # grid kept by default
    _, expected_affine = reorient(ct, RAS)
    np.testing.assert_allclose(label.affine, expected_affine)
    counts = np.bincount(label.array.ravel())
    assert counts[2] == 10 * 8 * 8 and counts[1] == 10 * (10 * 10 - 5 * 2)
    organs = tmp_path / "organs.txt"
    organs.write_text("spleen\nliver\n")
    main(
        [
            "merge-labels",
            "--input",
            str(tmp_path / "ts"),
            "--output",
            str(tmp_path / "o2"),
            "--organs",
            str(organs),
            *SMALL,
        ]
    )
    assert json.loads((tmp_path / "o2" / "labels.json").read_text())["1"] == "spleen"


def test_ct_mr_pairs(tmp_path):
    ct, body = _ct()
    mr = np.where(body, 500 + np.arange(body.size).reshape(body.shape) % 97, 5.0)
    write_nifti(tmp_path / "p" / "pat1" / "ct.nii.gz", ct, RAS)
    write_nifti(tmp_path / "p" / "pat1" / "mr.nii.gz", mr.astype(np.float32), RAS)
    out = tmp_path / "out"
    assert main(["ct-mr", "--input", str(tmp_path / "p"), "--output", str(out), *SMALL]) == 0
    (row,) = _rows(out / "ct-mr_index.csv")
    assert row == {"name": "pat1", "ct": "pat1/ct.nii.gz", "mr": "pat1/mr.nii.gz"}
    ct_out, mr_out = read_nifti(out / row["ct"]), read_nifti(out / row["mr"])
    assert ct_out.spacing == mr_out.spacing == (2.0, 2.0, 2.0)
    assert (
        ct_out.array.min() >= -1024
        and mr_out.array.max() <= np.percentile(mr_out.array, 99.8) + 1e-3
    )
    assert read_nifti(out / "pat1" / "mr_mask.nii.gz").array.mean() > 0.3


def test_bad_input_is_one_line(tmp_path, capsys):
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "broken.nii.gz").write_bytes(b"not a nifti")
    assert (
        main(["intra", "--input", str(tmp_path / "raw"), "--output", str(tmp_path / "o"), *SMALL])
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert err.startswith("prepare_embedding_data: error: cannot read") and "broken.nii.gz" in err
    assert main(["intra", "--input", str(tmp_path / "none"), "--output", str(tmp_path / "o")]) == 2


def test_all_cores_path(tmp_path):
    src = tmp_path / "raw"
    for i in range(2):
        write_nifti(src / f"c{i}.nii.gz", _ct(seed=i)[0], RAS)
    args = [
        "intra",
        "--input",
        str(src),
        "--output",
        str(tmp_path / "o"),
        "--min-object",
        "20",
        "--max-hole",
        "200",
        "--workers",
        "2",
    ]
    assert main(args) == 0
    assert len(_rows(tmp_path / "o" / "lymphnode_filename.csv")) == 2
