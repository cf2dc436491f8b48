import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from data_tools.ct_mr_ops import (
    parse_remap,
    remap_labels,
    remove_small_objects,
    resize_label_slice,
)
from data_tools.pre_ct_mr import main, preprocess
from data_tools.synthetic import make_dataset
from segfm.data.io.nifti import read_nifti, write_nifti
from segfm.errors import DataError
from segfm.transforms.intensity import WINDOWS, normalize_mr, window_ct

REPO = Path(__file__).resolve().parents[2]
FAST = {"workers": 1, "progress": False, "image_size": 16}


def _pair(root: Path, case: str, image: np.ndarray, label: np.ndarray, zooms=(0.5, 0.8, 3.0)):
    """Write ``image`` / ``label`` [Z, Y, X] as nnU-Net files; ``zooms`` in (x, y, z) order."""
    affine = np.diag([*zooms, 1.0])
    write_nifti(root / "images" / f"{case}_0000.nii.gz", image, affine)
    write_nifti(root / "labels" / f"{case}.nii.gz", label, affine)


def _blob_case(shape=(6, 20, 24), slices=(2, 5), value=1):
    """A CT-like image and a label with a 6 x 6 square on the given slices."""
    image = np.full(shape, -1000, dtype=np.int16)
    image[:, 2:-2, 2:-2] = 40
    image[:, 3, 3] = 1000
    label = np.zeros(shape, dtype=np.uint8)
    for z in slices:
        label[z, 5:11, 5:11] = value
    return image, label


@pytest.mark.parametrize(
    ("window", "values"),
    [
        ("abdomen", [-1000, -160, 40, 240, 1000]),
        ("chest", [-3000, -1350, -600, 150, 2000]),
        ("brain", [-1000, 0, 40, 80, 1000]),
    ],
)
def test_window_presets(window, values):
    assert window_ct(np.array(values), *WINDOWS[window]).tolist() == [0, 0, 127, 255, 255]


def test_window_is_uint8_and_degenerate_volume_is_zero():
    assert window_ct(np.array([0, 100]), 40, 400).dtype == np.uint8
    assert window_ct(np.full((2, 2), 500), 40, 400).tolist() == [[0, 0], [0, 0]]
    with pytest.raises(ValueError, match="width"):
        window_ct(np.zeros(3), 40, 0)


def test_mr_percentile_rule():
    image = np.concatenate([np.zeros(50), np.arange(1, 201), [10_000]]).astype(np.float32)
    out = normalize_mr(image)
    lo, hi = np.percentile(image[image > 0], [0.5, 99.5])
    expected = np.floor((np.clip(image, lo, hi) - lo) / (hi - lo) * 255)
    expected[image == 0] = 0
    assert out.dtype == np.uint8 and out.tolist() == expected.astype(int).tolist()
    assert out[:50].max() == 0 and out[50] == 0 and out[-1] == 255
    with pytest.raises(ValueError, match="no voxel"):
        normalize_mr(np.zeros(4))


def test_small_objects_3d_then_2d():
    label = np.zeros((4, 12, 12), dtype=np.uint8)
    label[1:4, 0:3, 0:3] = 1  # 27 voxels: kept
    label[0, 8:10, 8:10] = 1  # 4 voxels: removed in 3D
    for i in range(10):  # 26-connected diagonal of 4 + ... voxels, label 2
        label[i % 4, i, 11 - i] = 2 if i < 4 else 0
    # slice 1 holds 8 px, slice 2 holds 3 px of one 3D component of 11 voxels (label 3)
    label[1, 6:8, 4:8] = 3
    label[2, 6, 4:7] = 3
    out = remove_small_objects(label, min_size_3d=10, min_size_2d=5)
    assert out[1:4, 0:3, 0:3].min() == 1 and out[0, 8:10, 8:10].max() == 0
    assert not (out == 2).any()  # 4 voxels < 10, although 26-connected
    assert (out[1] == 3).sum() == 8  # survives 3D (11 >= 10), then 2D keeps the 8 px part
    assert not (out[2] == 3).any()  # 3 px < 5 on its slice
    # 2D first would have dropped the 8 px part too (8 < 10): the order matters
    diagonal = np.zeros((1, 6, 6), dtype=np.uint8)
    diagonal[0, np.arange(6), np.arange(6)] = 4  # 8-connected in 2D: one component of 6
    assert (remove_small_objects(diagonal, 6, 6) == 4).sum() == 6
    assert np.array_equal(remove_small_objects(label, 0, 0), label)


def test_small_objects_per_label():
    label = np.zeros((1, 4, 8), dtype=np.uint8)
    label[0, :, 0:2], label[0, :, 2:4] = 1, 2  # touching, 8 px each
    out = remove_small_objects(label, 1, 9)
    assert not out.any()


def test_remap():
    assert parse_remap("12:0, 13:1") == {12: 0, 13: 1}
    assert parse_remap("") == {}
    for bad in ("12", "a:1", "1:-1", "1:2,1:3"):
        with pytest.raises(ValueError, match="remap"):
            parse_remap(bad)
    label = np.array([[0, 12, 13, 5]], dtype=np.uint8)
    assert remap_labels(label, {12: 0, 13: 12}).tolist() == [[0, 0, 12, 5]]
    assert remap_labels(label, {5: 300}).dtype == np.uint16


def test_nearest_resize_keeps_ids():
    label = np.zeros((8, 8), dtype=np.uint16)
    label[:4] = 300
    out = resize_label_slice(label, 16)
    assert out.dtype == np.uint16 and out.shape == (16, 16)
    assert (out[:8] == 300).all() and (out[8:] == 0).all()


def test_nifti_axes_spacing_and_affine(tmp_path):
    xyz = np.arange(6 * 5 * 4, dtype=np.int16).reshape(6, 5, 4)  # X, Y, Z
    affine = np.diag([0.5, 0.8, 3.0, 1.0])
    affine[:3, 3] = (10, -20, 30)
    import nibabel as nib

    nib.save(nib.Nifti1Image(xyz, affine), tmp_path / "v.nii.gz")
    volume = read_nifti(tmp_path / "v.nii.gz")
    assert volume.array.shape == (4, 5, 6) and volume.array[3, 2, 1] == xyz[1, 2, 3]
    assert volume.spacing == (3.0, 0.8, 0.5)  # (z, y, x)
    assert np.allclose(volume.affine, affine)
    write_nifti(tmp_path / "w.nii.gz", volume.array.astype(np.int64), volume.affine)
    back = nib.load(tmp_path / "w.nii.gz")
    assert np.array_equal(np.asarray(back.dataobj), xyz) and back.get_data_dtype() == np.uint8
    assert np.allclose(back.affine, affine)
    assert sorted(os.listdir(tmp_path)) == ["v.nii.gz", "w.nii.gz"]  # no temporary left


def test_outputs_spacing_and_foreground_slices(tmp_path):
    image, label = _blob_case()
    _pair(tmp_path, "c1", image, label)
    out = tmp_path / "out"
    summary = preprocess(
        out,
        images=tmp_path / "images",
        labels=tmp_path / "labels",
        min_size_3d=10,
        min_size_2d=5,
        prefix="CTAbd",
        **FAST,
    )
    assert summary.written == ["CTAbd_c1"] and summary.skipped == []
    assert sorted(os.listdir(out / "imgs")) == ["CTAbd_c1-002.npy", "CTAbd_c1-005.npy"]
    assert sorted(os.listdir(out / "gts")) == sorted(os.listdir(out / "imgs"))
    npz = np.load(out / "npz" / "CTAbd_c1.npz")
    assert npz["imgs"].shape == (6, 20, 24) and npz["imgs"].dtype == np.uint8  # every slice
    assert npz["gts"].dtype == np.uint8 and np.array_equal(npz["gts"], label)
    assert npz["spacing"].dtype == np.float64 and npz["spacing"].tolist() == [3.0, 0.8, 0.5]
    assert np.allclose(npz["affine"], np.diag([0.5, 0.8, 3.0, 1.0]))
    assert str(npz["source"]) == str(tmp_path / "images" / "c1_0000.nii.gz")
    assert npz["imgs"][0, 0, 0] == 0 and npz["imgs"][0, 3, 3] == 255  # abdomen window
    img = np.load(out / "imgs" / "CTAbd_c1-005.npy")
    gt = np.load(out / "gts" / "CTAbd_c1-005.npy")
    assert img.shape == (16, 16, 3) and img.dtype == np.float32
    assert img.min() == 0 and img.max() == 1 and np.array_equal(img[..., 0], img[..., 2])
    assert gt.shape == (16, 16) and gt.dtype == np.uint8
    assert np.array_equal(gt, resize_label_slice(npz["gts"][5], 16))
    assert not (out / "labels.json").exists()  # no dataset.json given
    assert "float32" in (out / "preprocess.json").read_text()


def test_options_dtype_window_uint16_and_float_labels(tmp_path):
    image, label = _blob_case(value=1)
    label = label.astype(np.float32) * 300  # integral floats, ids above 255
    _pair(tmp_path, "c1", image, label)
    out = tmp_path / "out"
    preprocess(
        out,
        images=tmp_path / "images",
        labels=tmp_path / "labels",
        dtype="float64",
        window_level=1000,
        window_width=10,
        min_size_3d=0,
        min_size_2d=0,
        **FAST,
    )
    assert np.load(out / "imgs" / "CT_c1-002.npy").dtype == np.float64
    npz = np.load(out / "npz" / "CT_c1.npz")
    assert npz["gts"].dtype == np.uint16 and npz["gts"].max() == 300
    assert np.load(out / "gts" / "CT_c1-002.npy").dtype == np.uint16
    assert npz["imgs"].max() == 255 and (npz["imgs"] == 0).mean() > 0.99  # window at 1000 HU


def test_nnunet_dataset_remap_and_labels_json(tmp_path):
    raw = make_dataset(
        tmp_path / "raw", num_cases=2, seed=0, size_range=(40, 44), slices_range=(8, 9)
    )
    out = tmp_path / "out"
    preprocess(out, nnunet=raw, remap="2:0,5:6", min_size_3d=10, min_size_2d=5, **FAST)
    names = json.loads((out / "labels.json").read_text())
    assert names == {"1": "liver", "3": "kidney_left", "4": "kidney_right", "6": "aorta"}
    ids = set(np.unique(np.load(out / "npz" / "CT_synth_000.npz")["gts"]).tolist())
    assert 2 not in ids and 5 not in ids and 6 in ids


def test_resume_skips_finished_cases(tmp_path):
    raw = make_dataset(
        tmp_path / "raw", num_cases=3, seed=0, size_range=(40, 44), slices_range=(8, 9)
    )
    out, opts = tmp_path / "out", {"min_size_3d": 10, "min_size_2d": 5, **FAST}
    assert len(preprocess(out, nnunet=raw, **opts).written) == 3
    stamp = (out / "npz" / "CT_synth_000.npz").stat().st_mtime_ns
    (out / "npz" / "CT_synth_001.npz").unlink()  # as if interrupted during this case
    summary = preprocess(out, nnunet=raw, **opts)
    assert summary.written == ["CT_synth_001"]
    assert summary.skipped == ["CT_synth_000", "CT_synth_002"]
    assert (out / "npz" / "CT_synth_000.npz").stat().st_mtime_ns == stamp
    assert len(preprocess(out, nnunet=raw, overwrite=True, **opts).written) == 3
    with pytest.raises(DataError, match=r"preprocess\.json .*image_size 16 -> 8.*--overwrite"):
        preprocess(out, nnunet=raw, **{**opts, "image_size": 8})


def test_parallel_workers(tmp_path):
    raw = make_dataset(
        tmp_path / "raw", num_cases=3, seed=0, size_range=(40, 44), slices_range=(8, 9)
    )
    opts = {"min_size_3d": 10, "min_size_2d": 5, "image_size": 16, "progress": False}
    preprocess(tmp_path / "a", nnunet=raw, workers=2, **opts)
    preprocess(tmp_path / "b", nnunet=raw, workers=1, **opts)
    assert sorted(os.listdir(tmp_path / "a" / "imgs")) == sorted(
        os.listdir(tmp_path / "b" / "imgs")
    )
    a, b = (np.load(tmp_path / d / "npz" / "CT_synth_002.npz") for d in "ab")
    assert np.array_equal(a["imgs"], b["imgs"]) and np.array_equal(a["gts"], b["gts"])


@pytest.mark.parametrize("workers", [1, 2])
def test_errors_name_the_file_and_leave_no_partial_output(tmp_path, workers):
    image, label = _blob_case()
    _pair(tmp_path, "a_good", image, label)
    _pair(tmp_path, "b_bad", image, label[:, :10])
    out = tmp_path / "out"
    kwargs = {"images": tmp_path / "images", "labels": tmp_path / "labels", "min_size_3d": 1}
    with pytest.raises(DataError, match=r"b_bad\.nii\.gz has shape .* resample"):
        preprocess(out, **kwargs, **{**FAST, "workers": workers})
    assert not (out / "npz" / "CT_b_bad.npz").exists()
    assert not [
        p
        for d in ("imgs", "gts", "npz")
        if (out / d).is_dir()
        for p in (out / d).iterdir()
        if p.name.startswith(".") or "b_bad" in p.name
    ]


def test_pairing_and_unreadable_errors(tmp_path):
    image, label = _blob_case()
    _pair(tmp_path, "c1", image, label)
    kwargs = {"images": tmp_path / "images", "labels": tmp_path / "labels", **FAST}
    (tmp_path / "labels" / "c2.nii.gz").write_bytes(b"not a nifti")
    with pytest.raises(DataError, match=r"c2\.nii\.gz has no image"):
        preprocess(tmp_path / "out", **kwargs)
    (tmp_path / "images" / "c2_0000.nii.gz").write_bytes(b"not a nifti")
    with pytest.raises(DataError, match=r"cannot read .*c2_0000\.nii\.gz"):
        preprocess(tmp_path / "out", **kwargs)
    (tmp_path / "labels" / "c2.nii.gz").unlink()
    with pytest.raises(DataError, match=r"c2_0000\.nii\.gz has no label"):
        preprocess(tmp_path / "out", **kwargs)
    _pair(tmp_path, "c2", image, label.astype(np.float32) * 0.5)
    with pytest.raises(DataError, match=r"c2\.nii\.gz holds non-integer"):
        preprocess(tmp_path / "out", **kwargs)
    _pair(tmp_path, "c2", np.zeros_like(image), label)
    with pytest.raises(DataError, match=r"c2_0000\.nii\.gz.*no voxel > 0"):
        preprocess(tmp_path / "out", modality="MR", **kwargs)


def test_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="either nnunet"):
        preprocess(tmp_path, images=tmp_path)
    folders = {"images": tmp_path, "labels": tmp_path}
    with pytest.raises(ValueError, match="CT only"):
        preprocess(tmp_path, **folders, modality="MR", window="chest")
    with pytest.raises(ValueError, match="together"):
        preprocess(tmp_path, **folders, window_level=40)
    with pytest.raises(ValueError, match="image_size"):
        preprocess(tmp_path, **folders, image_size=0)
    with pytest.raises(ValueError, match="prefix"):
        preprocess(tmp_path, **folders, prefix="a/b")


def test_cli(tmp_path, capsys):
    result = subprocess.run(
        [sys.executable, "-m", "data_tools.pre_ct_mr", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert (
        result.returncode == 0 and "--min_size_3d" in result.stdout and "--remap" in result.stdout
    )
    image, label = _blob_case()
    _pair(tmp_path, "c1", image, label[:, :5])
    args = [
        "--images",
        str(tmp_path / "images"),
        "--labels",
        str(tmp_path / "labels"),
        "--output",
        str(tmp_path / "out"),
        "--workers",
        "1",
        "--image_size",
        "8",
    ]
    with pytest.raises(SystemExit) as error:
        main(args)
    assert "c1.nii.gz has shape" in str(error.value.code) and "\n" not in str(error.value.code)
    _pair(tmp_path, "c1", image, label)
    main([*args, "--min_size_3d", "10", "--min_size_2d", "5"])
    assert "1 cases written" in capsys.readouterr().out
