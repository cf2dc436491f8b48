import json
import shutil

import numpy as np
import pytest
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device

from segfm.data import BaseDataModule, NpySliceDataModule
from segfm.data.io.npy_slices import index_slices, read_volume
from segfm.data.splits import split_cases
from segfm.errors import ConfigError, DataError
from segfm.sample import ClassInfo
from tests.data.npy_slices.data import NUM_CASES, SIZE

CASES = [f"CT_synth_{i:03d}" for i in range(NUM_CASES)]


def _module(root, **kwargs):
    return NpySliceDataModule(str(root), batch_size=2, num_workers=0, **kwargs)


def _splits(dm):
    dm.setup("fit")
    dm.setup("test")
    return {
        "train": {s.case_id for s in dm.datasets["train"].slices},
        "val": {s.case_id for s in dm.datasets["val"].slices},
        "test": {p.stem for p in dm.datasets["test"].paths},
    }


@pytest.fixture
def root(npy_slices_root, tmp_path):
    """A private copy of the session dataset, free to damage."""
    return shutil.copytree(npy_slices_root, tmp_path / "root")


def test_index_groups_slices_by_case(npy_slices_root):
    index = index_slices(npy_slices_root)
    assert list(index) == CASES
    for case, slices in index.items():
        assert [s.index for s in slices] == sorted(s.index for s in slices)
        assert all(
            s.case_id == case and s.image.name == f"{case}-{s.index:03d}.npy" for s in slices
        )


def test_split_by_case_disjoint_and_deterministic(npy_slices_root):
    splits = _splits(_module(npy_slices_root))
    assert splits == _splits(_module(npy_slices_root))
    assert not (splits["train"] & splits["val"] or splits["train"] & splits["test"])
    assert not splits["val"] & splits["test"]
    assert splits["train"] | splits["val"] | splits["test"] == set(CASES)
    assert len(splits["val"]) == 1 and len(splits["test"]) == 1  # at least one case each
    names = [f"case_{i}" for i in range(40)]
    a, b = split_cases(names, 0.1, 0.2, 0), split_cases(names[::-1], 0.1, 0.2, 0)
    assert a == b and (len(a["val"]), len(a["test"])) == (4, 8)
    assert split_cases(names, 0.1, 0.2, 1) != a
    with pytest.raises(DataError, match="none for training"):
        split_cases(names[:2], 0.1, 0.2, 0)


def test_split_file(npy_slices_root, tmp_path):
    path = tmp_path / "split.json"
    path.write_text(json.dumps({"train": CASES[:3], "val": [CASES[3]], "test": [CASES[4]]}))
    splits = _splits(_module(npy_slices_root, split_file=str(path)))
    assert splits == {"train": set(CASES[:3]), "val": {CASES[3]}, "test": {CASES[4]}}
    path.write_text(json.dumps({"train": ["nope"]}))
    with pytest.raises(DataError, match=r"split\.json lists 'nope'"):
        _module(npy_slices_root, split_file=str(path)).setup("fit")
    path.write_text(json.dumps({"train": CASES[:2], "test": CASES[1:2]}))
    with pytest.raises(DataError, match="twice"):
        _module(npy_slices_root, split_file=str(path)).setup("fit")
    path.write_text(json.dumps({"train": CASES, "tset": []}))
    with pytest.raises(DataError, match="only the keys"):
        _module(npy_slices_root, split_file=str(path)).setup("fit")
    path.write_text(json.dumps({"train": CASES}))
    with pytest.raises(DataError, match="no test case"):
        _module(npy_slices_root, split_file=str(path)).setup("test")


def test_fit_samples(npy_slices_root):
    dm = _module(npy_slices_root)
    dm.setup("fit")
    sample = dm.datasets["train"][0]
    assert set(sample) == {"image", "label", "spacing", "classes", "meta"}
    assert sample["image"].shape == (3, SIZE, SIZE) and sample["image"].dtype == torch.float32
    assert 0 <= sample["image"].min() and sample["image"].max() <= 1
    assert sample["label"].shape == (1, SIZE, SIZE) and sample["label"].dtype == torch.int64
    assert sample["label"].any()  # only foreground slices are stored
    assert sample["spacing"].shape == (2,) and sample["spacing"].dtype == torch.float32
    case = sample["meta"]["case_id"]
    npz = np.load(npy_slices_root / "npz" / f"{case}.npz")
    expected = npz["spacing"][1:] * npz["imgs"].shape[1:] / SIZE  # source field of view / SIZE
    assert np.allclose(sample["spacing"].numpy(), expected, rtol=1e-5)
    assert sample["classes"][1] == ClassInfo("liver") and sample["classes"][5].name == "aorta"
    assert sample["meta"]["dataset"] == "CT" and isinstance(sample["meta"]["slice_index"], int)
    assert sample["meta"]["path"].endswith(f"{case}-{sample['meta']['slice_index']:03d}.npy")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 3, SIZE, SIZE) and len(batch["meta"]) == 2
    moved = move_data_to_device(batch, torch.device("cpu"))  # what Lightning does to a batch
    assert moved["classes"][0][1] == ClassInfo("liver")
    assert len(next(iter(dm.val_dataloader()))["meta"]) <= 2


def test_resize_option(npy_slices_root):
    dm = _module(npy_slices_root, image_size=16)
    dm.setup("fit")
    small = dm.datasets["train"][0]
    dm_full = _module(npy_slices_root)
    dm_full.setup("fit")
    full = dm_full.datasets["train"][0]
    assert small["image"].shape == (3, 16, 16) and small["label"].shape == (1, 16, 16)
    assert small["label"].dtype == torch.int64
    assert set(small["label"].unique().tolist()) <= set(full["label"].unique().tolist())
    assert torch.allclose(small["spacing"], full["spacing"] * 2)


def test_test_and_predict_volumes(npy_slices_root):
    dm = _module(npy_slices_root)
    for stage in ("test", "predict"):
        dm.setup(stage)
        loader = getattr(dm, f"{stage}_dataloader")()
        batch = next(iter(loader))
        meta = batch["meta"][0]
        npz = np.load(npy_slices_root / "npz" / f"{meta['case_id']}.npz")
        d, h, w = npz["imgs"].shape
        assert batch["image"].shape == (1, 1, d, h, w) and batch["image"].dtype == torch.float32
        assert torch.equal(batch["image"][0, 0], torch.from_numpy(npz["imgs"] / 255).float())
        assert batch["label"].shape == (1, 1, d, h, w) and batch["label"].dtype == torch.int64
        assert batch["spacing"][0].tolist() == pytest.approx(npz["spacing"].tolist())
        assert meta["shape"] == (d, h, w) and meta["dataset"] == "CT"
        assert meta["affine"].dtype == np.float64 and np.array_equal(meta["affine"], npz["affine"])
        assert meta["source"].endswith(f"{meta['case_id'][3:]}_0000.nii.gz")
        assert loader.batch_size == 1


def test_no_labels_json_gives_empty_classes(root):
    (root / "labels.json").unlink()
    dm = _module(root)
    dm.setup("fit")
    assert dm.datasets["train"][0]["classes"] == {}


def test_invalid_arguments(npy_slices_root):
    for kwargs in (
        {"image_size": 0},
        {"val_fraction": 1.0},
        {"test_fraction": -0.1},
        {"val_fraction": 0.5, "test_fraction": 0.5},
        {"batch_size": 0},
    ):
        with pytest.raises(ValueError, match=next(iter(kwargs))):
            NpySliceDataModule(str(npy_slices_root), **kwargs)
    with pytest.raises(ConfigError, match=r"setup\('test'\)"):
        _module(npy_slices_root).test_dataloader()
    assert issubclass(NpySliceDataModule, BaseDataModule)


def _first(root, folder="imgs"):
    return sorted((root / folder).iterdir())[0]


def _sample_of(root, path):
    """The training sample of one slice file (all cases in train)."""
    dm = _module(root, val_fraction=0.0, test_fraction=0.0)
    dm.setup("fit")
    dataset = dm.datasets["train"]
    return dataset[next(i for i, s in enumerate(dataset.slices) if path.name == s.image.name)]


def test_missing_folders(root, tmp_path):
    with pytest.raises(DataError, match="nowhere does not exist"):
        _module(tmp_path / "nowhere").setup("fit")
    shutil.rmtree(root / "gts")
    with pytest.raises(DataError, match=r"gts is missing"):
        _module(root).setup("fit")


def test_image_without_mask_and_reverse(root):
    mask = _first(root, "gts")
    moved = mask.rename(root / mask.name)
    with pytest.raises(DataError, match=f"{mask.name} has no mask"):
        _module(root).setup("fit")
    moved.rename(mask)
    _first(root, "imgs").unlink()
    with pytest.raises(DataError, match=f"{mask.name} has no image"):
        _module(root).setup("fit")


@pytest.mark.parametrize(
    ("folder", "array", "message"),
    [
        ("gts", np.zeros((SIZE, SIZE - 1), np.uint8), "has shape"),
        ("gts", np.zeros((SIZE, SIZE), np.float32), "dtype float32"),
        ("imgs", np.full((SIZE, SIZE, 3), 255.0, np.float32), r"need \[0, 1\]"),
        ("imgs", np.zeros((SIZE, SIZE, 4), np.float32), "has shape"),
        ("imgs", np.zeros((SIZE, SIZE, 3), np.int32), "dtype int32"),
    ],
)
def test_bad_slice_files(root, folder, array, message):
    path = _first(root, folder)
    np.save(path, array)
    with pytest.raises(DataError, match=f"{path.name}.*{message}|{message}.*{path.name}"):
        _sample_of(root, path)


def test_other_image_encodings_accepted(root):
    path = _first(root)
    image = np.load(path)
    np.save(path, (image[..., 0] * 255).astype(np.uint8))  # grey uint8 (H, W)
    sample = _sample_of(root, path)
    assert sample["image"].shape == (3, SIZE, SIZE)
    assert torch.allclose(sample["image"][1], torch.from_numpy(image[..., 0]), atol=1 / 255)


def test_corrupt_files(root):
    path = _first(root)
    path.write_bytes(path.read_bytes()[:100])  # truncated
    with pytest.raises(DataError, match=f"cannot read .*{path.name}.*--overwrite"):
        _sample_of(root, path)
    npz = sorted((root / "npz").iterdir())[0]
    npz.write_bytes(b"garbage")
    with pytest.raises(DataError, match=f"cannot read .*{npz.name}"):
        read_volume(npz)
    npz.unlink()
    with pytest.raises(DataError, match=f"{npz.name} does not exist"):
        read_volume(npz)
