"""data_tools.synthetic_npz: a small CVPR 2025 npz root for users."""

import numpy as np
import pytest
from scipy import ndimage

from data_tools.synthetic_npz import INSTANCE, SEMANTIC, main, make_dataset
from segfm.data import NpzDataModule
from segfm.data.io.npz_cvpr import (
    find_evaluation_cases,
    find_training_cases,
    read_case,
    read_class_prompts,
)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("synth") / "data", num_cases=2, num_test=1)


def test_layout_and_content(root):
    entries = read_class_prompts(root / "class_prompts.json")
    assert set(entries) == {SEMANTIC, INSTANCE} and entries[INSTANCE].instance
    cases = find_training_cases(root, sorted(entries))
    assert sorted(c.case_id for c in cases) == sorted(
        f"{ds}/{ds}_{i:03d}" for ds in (SEMANTIC, INSTANCE) for i in range(2)
    )
    for case in cases:
        volume = read_case(case)
        assert volume.image.dtype == np.uint8 and volume.label is not None
        d, h, w = volume.image.shape
        assert 28 <= d <= 36 and 88 <= h <= 104 and 88 <= w <= 104
        ids = set(np.unique(volume.label).tolist()) - {0}
        if case.dataset == SEMANTIC:
            assert ids and ids <= set(entries[SEMANTIC].classes)
            liver = volume.image[volume.label == 1].mean()
            assert 130 < liver < 160  # ~60 HU in the 40 / 400 window
        else:
            _, count = ndimage.label(volume.label > 0)  # lesions never touch
            assert len(ids) >= 3 and count == len(ids) == max(ids)
            assert volume.image[volume.label > 0].min() > volume.image[volume.label == 0].mean()


def test_evaluation_cases_carry_prompts_and_masks(root):
    entries = read_class_prompts(root / "class_prompts.json")
    cases = find_evaluation_cases(root, sorted(entries), entries)
    assert len(cases) == 2 and all(c.mask is not None for c in cases)
    for case in cases:
        volume = read_case(case, read_prompts=True)
        present = sorted(set(np.unique(volume.label).tolist()) - {0})
        if case.dataset == SEMANTIC:
            assert list(volume.text_prompts) == present and len(volume.boxes) == len(present)
            for c, box in zip(present, volume.boxes, strict=True):
                # get_boxes.py: the tight box of the class on z_mid widened by at most
                # int(5 * size / 256) px per side (clipped to the slice); z range tight
                zs = np.flatnonzero((volume.label == c).any(axis=(1, 2)))
                assert (box["z_min"], box["z_max"]) == (zs[0], zs[-1])
                assert box["z_mid"] == zs[len(zs) // 2]
                ys, xs = np.nonzero(volume.label[box["z_mid"]] == c)
                h, w = volume.label.shape[1:]
                dy, dx = int(5 * h / 256), int(5 * w / 256)
                assert max(0, ys.min() - dy) <= box["z_mid_y_min"] <= ys.min()
                assert max(0, xs.min() - dx) <= box["z_mid_x_min"] <= xs.min()
                assert ys.max() <= box["z_mid_y_max"] <= min(h - 1, ys.max() + dy)
                assert xs.max() <= box["z_mid_x_max"] <= min(w - 1, xs.max() + dx)
        else:
            assert list(volume.text_prompts) == [1] and volume.boxes is None


def test_seeded_and_resumable(root, tmp_path):
    again = make_dataset(tmp_path / "a", num_cases=2, num_test=1)
    other = make_dataset(tmp_path / "b", num_cases=1, num_test=0, seed=1)
    name = f"{SEMANTIC}/train/{SEMANTIC}_000.npz"
    a, b, c = (np.load(r / name)["imgs"] for r in (root, again, other))
    assert np.array_equal(a, b) and not (a.shape == c.shape and np.array_equal(a, c))
    stamp = (again / name).stat().st_mtime_ns
    (again / f"{INSTANCE}/test/{INSTANCE}_t00.npz").unlink()
    main(["--output", str(again), "--num_cases", "2", "--num_test", "1"])
    assert (again / name).stat().st_mtime_ns == stamp
    assert (again / f"{INSTANCE}/test/{INSTANCE}_t00.npz").is_file()
    with pytest.raises(ValueError, match="num_cases"):
        make_dataset(tmp_path / "c", num_cases=0)


def test_npz_module_reads_it_as_2_5d_slices(root):
    dm = NpzDataModule(
        str(root), mode="slices25d", image_size=64, batch_size=2, num_workers=0, val_fraction=0.3
    )
    dm.setup("fit")
    sample = dm.datasets["train"][0]
    assert sample["image"].shape == (3, 64, 64) and sample["label"].shape == (1, 64, 64)
    dm.setup("test")
    assert len(dm.datasets["test"]) == 2
