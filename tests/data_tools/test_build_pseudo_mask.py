"""``python -m data_tools.build_pseudo_mask`` on generated M3D-Seg cases."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
from scipy import sparse

from data_tools.build_pseudo_mask import build_pseudo_masks, main, read_case
from data_tools.felzenszwalb3d import felzenszwalb_3d
from segfm.errors import DataError
from tests.data_tools.test_felzenszwalb3d import adjusted_rand_index

SHAPE = (64, 64, 32)  # (X, Y, Z) on disk; the tool halves it to SIZE
SIZE = (32, 32, 16)
# organs as boxes (x0, x1, y0, y1, z0, z1) at even offsets: nearest halving keeps x0 / 2 .. x1 / 2
ORGANS = [(8, 30, 10, 40, 4, 28), (40, 42, 10, 50, 6, 26)]  # the second is 2 voxels thin


def make_case(folder: Path, seed: int) -> None:
    """One case: bright organs, a dark unlabelled block, mild noise; one-hot masks as csr."""
    rng = np.random.default_rng(seed)
    image = 0.2 * rng.standard_normal(SHAPE)
    masks = np.zeros((len(ORGANS), *SHAPE), dtype=np.uint8)
    for c, (x0, x1, y0, y1, z0, z1) in enumerate(ORGANS):
        masks[c, x0:x1, y0:y1, z0:z1] = 1
        image[x0:x1, y0:y1, z0:z1] += 3.0 + 2 * c
    image[36:60, 52:64, :] -= 3.0
    folder.mkdir(parents=True)
    np.save(folder / "image.npy", image[None].astype(np.float32))
    csr = sparse.csr_matrix(masks.reshape(len(ORGANS), -1))
    sparse.save_npz(folder / f"mask_{masks.shape}.npz", csr)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """``0000`` with a json naming its cases by other absolute paths, ``0001`` without json."""
    for i, case in enumerate(["case_a", "case_b"]):
        make_case(tmp_path / "0000" / case, seed=i)
    entry = {"image": "/elsewhere/0000/case_a/image.npy", "label": "/elsewhere/x.npz"}
    listing = {"train": [entry], "test": [{**entry, "image": "0000/case_b/image.npy"}]}
    (tmp_path / "0000" / "0000.json").write_text(json.dumps(listing))
    make_case(tmp_path / "0001" / "case_c", seed=2)
    return tmp_path


def expected_organ(c: int) -> np.ndarray:
    """Organ ``c`` on the halved grid, computed from its box."""
    x0, x1, y0, y1, z0, z1 = ORGANS[c]
    mask = np.zeros(SIZE, dtype=bool)
    mask[x0 // 2 : x1 // 2, y0 // 2 : y1 // 2, z0 // 2 : z1 // 2] = True
    return mask


def test_writes_pseudo_masks(root: Path) -> None:
    summary = build_pseudo_masks(root, "0000", min_size=50, spatial_size=SIZE, progress=False)
    assert [p.name for p in summary.written] == ["case_a", "case_b"] and not summary.skipped
    for case in ("case_a", "case_b"):
        mask = np.load(root / "0000" / case / "pseudo_mask.npy")
        assert mask.shape == SIZE and mask.dtype == np.int64
        organs = [expected_organ(c) for c in range(len(ORGANS))]
        ids = [np.unique(mask[organ]) for organ in organs]
        assert all(i.size == 1 for i in ids)  # every organ voxel, the thin organ's too
        assert ids[1][0] == ids[0][0] + 1
        assert mask[~(organs[0] | organs[1])].max() < ids[0][0]  # Felzenszwalb ids below
        # the rest is the segmentation of the image averaged over 2x2x2 blocks (area resize)
        image = np.load(root / "0000" / case / "image.npy")[0]
        halved = image.reshape(SIZE[0], 2, SIZE[1], 2, SIZE[2], 2).mean(axis=(1, 3, 5))
        regions = felzenszwalb_3d(halved, min_size=50)
        outside = ~(organs[0] | organs[1])
        assert adjusted_rand_index(mask[outside], regions[outside]) > 0.99
        assert ids[0][0] == regions.max() + 1
    assert not (root / "0001" / "case_c" / "pseudo_mask.npy").exists()


def test_resumes_and_overwrites(root: Path) -> None:
    kwargs = {"min_size": 50, "spatial_size": SIZE, "progress": False, "workers": 1}
    build_pseudo_masks(root, "0001", **kwargs)
    target = root / "0001" / "case_c" / "pseudo_mask.npy"
    os.utime(target, (0, 0))
    summary = build_pseudo_masks(root, "0001", **kwargs)
    assert [p.name for p in summary.skipped] == ["case_c"] and not summary.written
    assert target.stat().st_mtime == 0
    summary = build_pseudo_masks(root, "0001", overwrite=True, **kwargs)
    assert [p.name for p in summary.written] == ["case_c"]
    assert target.stat().st_mtime > 0
    assert not [p for p in target.parent.iterdir() if p.name.startswith(".")]


def test_processes_give_the_same_masks(root: Path, tmp_path: Path) -> None:
    build_pseudo_masks(root, ["0000", "0001"], min_size=50, spatial_size=SIZE, workers=2)
    first = {p: np.load(p) for p in root.glob("*/*/pseudo_mask.npy")}
    assert len(first) == 3
    build_pseudo_masks(
        root,
        ["0000", "0001"],
        min_size=50,
        spatial_size=SIZE,
        workers=1,
        overwrite=True,
        progress=False,
    )
    for path, mask in first.items():
        assert np.array_equal(np.load(path), mask)


def test_cli(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(
        [
            "--root",
            str(root),
            "--code",
            "0001",
            "--min-size",
            "50",
            "--spatial-size",
            "32",
            "32",
            "16",
            "--workers",
            "1",
            "--merge-percentile",
            "30",
        ]
    )
    assert "1 pseudo masks written" in capsys.readouterr().out
    assert np.load(root / "0001" / "case_c" / "pseudo_mask.npy").shape == SIZE


def test_bad_image_names_the_file(root: Path) -> None:
    bad = root / "0001" / "case_c" / "image.npy"
    bad.write_bytes(b"not numpy")
    with pytest.raises(DataError, match=r"case_c/image\.npy"):
        build_pseudo_masks(root, "0001", spatial_size=SIZE, workers=1, progress=False)


def test_inconsistent_mask_names_the_file(root: Path) -> None:
    folder = root / "0001" / "case_c"
    mask = next(folder.glob("mask_*.npz"))
    mask.rename(folder / "mask_(2, 64, 64, 30).npz")
    with pytest.raises(DataError, match=r"mask_\(2, 64, 64, 30\)\.npz"):
        read_case(folder)


def test_missing_dataset(root: Path) -> None:
    with pytest.raises(DataError, match="--code"):
        build_pseudo_masks(root, "0042", progress=False)
    with pytest.raises(SystemExit):
        main(["--root", str(root), "--code", "0001", "--min-size", "0"])
