import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from scipy import sparse

from data_tools.build_dataset import build_dataset, main, normalize, one_hot, pair_files
from segfm.data.io.m3d_seg import mask_shape, read_dataset, read_image, read_label
from segfm.data.io.nifti import write_nifti
from segfm.errors import DataError

SHAPE = (6, 14, 16)  # (Z, Y, X) as write_nifti takes it
ZOOMS = (0.7, 0.9, 3.0)  # (x, y, z)
FAST = {"workers": 1, "progress": False}


def _case(root: Path, name: str, seed: int, top: int = 2, image_name: str | None = None) -> None:
    """An image with a bright body on a dark background, and a label with ids 0..top."""
    rng = np.random.default_rng(seed)
    image = rng.normal(-800, 30, SHAPE)
    image[1:5, 3:11, 3:13] = rng.normal(60, 20, (4, 8, 10))
    label = np.zeros(SHAPE, dtype=np.uint8)
    label[1:3, 4:8, 4:9] = 1
    label[3:5, 6:10, 8:12] = top
    affine = np.diag([*ZOOMS, 1.0])
    write_nifti(root / "images" / f"{image_name or name}.nii.gz", image.astype(np.float32), affine)
    write_nifti(root / "labels" / f"{name}.nii.gz", label, affine)


@pytest.fixture
def folders(tmp_path: Path) -> Path:
    for i in range(5):
        _case(tmp_path, f"case{i}", i)
    return tmp_path


def _build(folders: Path, **kwargs: object):
    args = {"code": "0000", "categories": ["liver", "kidney"], "out": folders / "out"}
    return build_dataset(folders / "images", folders / "labels", **(args | FAST | kwargs))


def test_layout_json_and_split(folders: Path) -> None:
    summary = _build(folders, test_ratio=0.2, seed=3)
    assert summary.written == [f"case{i}" for i in range(5)] and not summary.skipped
    code_dir = folders / "out" / "0000"
    content = json.loads((code_dir / "0000.json").read_text())
    assert set(content) == {
        "name", "description", "tensorImageSize", "modality", "labels", "numTraining",
        "numTest", "train", "test",
    }  # fmt: skip
    assert content["labels"] == {"0": "background", "1": "liver", "2": "kidney"}
    assert content["modality"] == {"0": "CT"} and content["tensorImageSize"] == "4D"
    assert (content["numTraining"], content["numTest"]) == (4, 1) == (len(summary.train), 1)
    assert sorted(summary.train + summary.test) == summary.written
    for entry in content["train"] + content["test"]:
        assert Path(entry["image"]).is_absolute() and Path(entry["image"]).is_file()
        assert Path(entry["label"]).name == "mask_(2, 16, 14, 6).npz"  # (C, X, Y, Z)
        assert np.allclose(np.diag(entry["affine"]), [*ZOOMS, 1.0])
    assert sorted(p.name for p in (code_dir / "case0").iterdir()) == [
        "image.npy",
        "mask_(2, 16, 14, 6).npz",
    ]
    again = _build(folders, test_ratio=0.2, seed=3)  # same seed: same split
    assert (again.train, again.test) == (summary.train, summary.test)
    other = build_dataset(
        folders / "images", folders / "labels", "0001", ["a", "b"], folders / "out",
        test_ratio=0.5, seed=3, **FAST,
    )  # fmt: skip
    assert len(other.test) == math.ceil(0.5 * 5) and (folders / "out" / "0001").is_dir()


def test_masks_round_trip_and_axes(folders: Path) -> None:
    _build(folders)
    case = folders / "out" / "0000" / "case1"
    image = np.load(case / "image.npy")
    assert image.dtype == np.float32 and image.shape == (1, 16, 14, 6)  # (1, X, Y, Z)
    mask = case / "mask_(2, 16, 14, 6).npz"
    onehot = sparse.load_npz(mask).toarray().reshape(mask_shape(mask))
    label = np.zeros(SHAPE, dtype=np.uint8)
    label[1:3, 4:8, 4:9] = 1
    label[3:5, 6:10, 8:12] = 2
    for c in (1, 2):
        assert np.array_equal(onehot[c - 1], (label == c).transpose(2, 1, 0))
    assert np.array_equal(read_label(mask), label)  # back to (Z, Y, X)
    assert read_image(case / "image.npy").shape == SHAPE


def test_normalisation_statistics(folders: Path) -> None:
    _build(folders)
    stored = np.load(folders / "out" / "0000" / "case2" / "image.npy")[0]
    rng = np.random.default_rng(2)
    source = rng.normal(-800, 30, SHAPE)
    source[1:5, 3:11, 3:13] = rng.normal(60, 20, (4, 8, 10))
    foreground = source.transpose(2, 1, 0) > source.mean()
    assert foreground.sum() == 4 * 8 * 10
    assert abs(stored[foreground].mean()) < 0.02 and abs(stored[foreground].std() - 1) < 0.02
    assert stored.min() > -4  # the background is clipped to the foreground's 0.05 percentile


def test_outliers_are_clipped_with_unclipped_statistics() -> None:
    rng = np.random.default_rng(0)
    body = rng.normal(60, 20, 10_000)
    values = np.concatenate([np.full(10_000, -1000.0), body, [30_000.0] * 3])
    out = normalize(values)
    foreground = values[values > values.mean()]
    assert foreground.size == 10_003
    mean, std = foreground.mean(), foreground.std()  # SegVol: taken before the clip
    top = (np.percentile(foreground, 99.95) - mean) / std
    assert out.dtype == np.float32 and out[-3:] == pytest.approx([top] * 3, rel=1e-5)
    assert top < (body.max() + 1 - mean) / std  # the outliers land inside the body's range
    assert np.all(np.diff(out[10_000:-3][np.argsort(body)]) >= 0)  # order kept (ties at clips)
    with pytest.raises(DataError, match="constant"):
        normalize(np.full((3, 3), 7.0), "flat.nii.gz")


def test_unknown_label_values_refused(folders: Path) -> None:
    _case(folders, "case9", 9, top=3)
    with pytest.raises(DataError, match=r"case9\.nii\.gz holds label values \[3\]"):
        _build(folders)
    with pytest.raises(DataError, match=r"outside 0\.\.1"):
        one_hot(np.array([0, 1, 2]), 1, "x.nii.gz")
    assert one_hot(np.array([[0, 2]]), 2).tolist() == [[[0, 0]], [[0, 1]]]


def test_resumes_and_rewrites_only_missing(folders: Path) -> None:
    _build(folders)
    code_dir = folders / "out" / "0000"
    stamp = (code_dir / "case0" / "image.npy").stat().st_mtime_ns
    next(code_dir.joinpath("case3").glob("mask_*.npz")).unlink()
    (code_dir / "case3" / ".tmp-abc-image.npy").write_bytes(b"partial")
    summary = _build(folders)
    assert summary.written == ["case3"] and len(summary.skipped) == 4
    assert (code_dir / "case0" / "image.npy").stat().st_mtime_ns == stamp
    assert not list(code_dir.rglob(".tmp-*"))
    with pytest.raises(DataError, match="built with labels"):
        _build(folders, categories=["spleen", "liver"])


def test_pairing_by_name(tmp_path: Path) -> None:
    _case(tmp_path, "a", 0, image_name="a_0000")  # nnU-Net image name
    _case(tmp_path, "b", 1)
    write_nifti(tmp_path / "images" / "lonely.nii.gz", np.ones(SHAPE), np.eye(4))
    with pytest.raises(DataError, match=r"1 files have no partner.*lonely\.nii\.gz"):
        pair_files(tmp_path / "images", tmp_path / "labels")
    pairs = pair_files(tmp_path / "images", tmp_path / "labels", skip_unpaired=True)
    assert [(p.case, p.image.name, p.label.name) for p in pairs] == [
        ("a", "a_0000.nii.gz", "a.nii.gz"),
        ("b", "b.nii.gz", "b.nii.gz"),
    ]


def test_orientation_option(folders: Path) -> None:
    _build(folders, orientation="LPS", code="lps")
    _build(folders, code="raw")
    flipped = np.load(folders / "out" / "lps" / "case0" / "image.npy")
    raw = np.load(folders / "out" / "raw" / "case0" / "image.npy")
    assert np.array_equal(flipped, raw[:, ::-1, ::-1, :])  # R->L and A->P flip X and Y
    affine = np.array(read_dataset(folders / "out", "lps").train[0].affine)
    assert affine[0, 0] < 0 and affine[1, 1] < 0 and affine[2, 2] > 0
    with pytest.raises(ValueError, match="orientation"):
        _build(folders, orientation="RRS")


def test_command_line(folders: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = folders / "cli"
    argv = ["--image-dir", str(folders / "images"), "--label-dir", str(folders / "labels")]
    argv += ["--code", "0003", "--categories", "liver,kidney", "--out", str(out)]
    main([*argv, "--test-ratio", "0.4", "--workers", "2"])
    assert "5 cases written, 0 already done; 3 train / 2 test" in capsys.readouterr().out
    assert len(read_dataset(out, "0003").test) == 2
    with pytest.raises(SystemExit, match=r"error: .*holds no"):
        main([*argv[:2], "--label-dir", os.fspath(folders), *argv[4:]])
