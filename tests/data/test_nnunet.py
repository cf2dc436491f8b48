import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import segfm.data.volume_cache as volume_cache
from data_tools.synthetic import LABELS, make_dataset
from segfm.data import ClassFolderDataModule, NnUNetDataModule
from segfm.data.io.class_folders import find_items
from segfm.data.io.geometry import resample_nearest
from segfm.data.io.nifti import read_nifti, write_nifti
from segfm.data.io.nnunet import channel_names, find_images, read_fold
from segfm.errors import DataError
from segfm.sample import ClassInfo
from tests.data.nnunet.data import CASES, CLASSES, FOLDS, TEST_CASES

NAMES = {v: ClassInfo(k) for k, v in LABELS.items() if v}
SAMPLE_KEYS = {"image", "label", "classes", "spacing", "meta"}
VOLUME_META = {"case_id", "dataset", "source", "affine", "source_affine", "source_shape"}


def _module(root, tmp_path, cls=NnUNetDataModule, **kwargs):
    kwargs = {"patch_size": 16, "cache_dir": str(tmp_path / "cache"), **kwargs}
    return cls(str(root), batch_size=2, num_workers=0, **kwargs)


def _ids(dm, split):
    return [item.case_id for item in dm.datasets[split].items]


def _source_label(sample):
    image = Path(sample["meta"]["source"])
    case = image.name.removesuffix(".nii.gz").removesuffix("_0000")
    return read_nifti(
        image.parent.parent / image.parent.name.replace("images", "labels") / f"{case}.nii.gz"
    )


def _bbox_centres(label):
    """Bounding-box centre (z, y, x) of every class id of a [1, P, P, P] label tensor."""
    label = label[0].numpy()
    return {
        int(c): (np.argwhere(label == c).min(0) + np.argwhere(label == c).max(0)) / 2
        for c in np.unique(label)
        if c
    }


@pytest.fixture
def root(nnunet_root, tmp_path):
    """A private copy of the session dataset, free to damage."""
    ignore = shutil.ignore_patterns(".segfm_cache")  # other tests may have cached volumes
    return shutil.copytree(nnunet_root, tmp_path / "Dataset001_Synth", ignore=ignore)


def test_fit_samples_follow_the_contract(nnunet_root, tmp_path):
    dm = _module(nnunet_root, tmp_path, patch_size=32)
    dm.setup("fit")
    assert len(dm.datasets["train"]) + len(dm.datasets["val"]) == 5  # one case held out
    for split in ("train", "val"):
        sample = dm.datasets[split][0]
        assert set(sample) == SAMPLE_KEYS
        assert set(sample["meta"]) == {"case_id", "dataset", "source"}
        assert sample["meta"]["dataset"] == "Dataset001_Synth"
        assert sample["image"].shape == sample["label"].shape == (1, 32, 32, 32)
        assert (
            sample["image"].dtype.is_floating_point
            and str(sample["image"].dtype) == "torch.float32"
        )
        assert str(sample["label"].dtype) == "torch.int64"
        assert sample["spacing"].tolist() == [1.5, 1.5, 1.5]
        assert sample["classes"] == NAMES
        assert len(np.unique(sample["label"])) >= 4  # every class of the case, not a binary mask
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 1, 32, 32, 32) and batch["spacing"].shape == (2, 3)


def test_val_crop_centred_on_largest_class_and_padded(nnunet_root, tmp_path):
    # a patch larger than the volume holds all of it; the range marks padding (data >= -1024)
    dm = _module(nnunet_root, tmp_path, patch_size=48, intensity_range=(-2000.0, 2000.0))
    dm.setup("validate")
    for index in range(len(dm.datasets["val"])):
        sample = dm.datasets["val"][index]
        label, image = sample["label"][0].numpy(), sample["image"][0].numpy()
        counts = np.bincount(label.ravel())
        largest = int(np.argmax(counts[1:])) + 1
        assert np.abs(_bbox_centres(sample["label"])[largest] - 23.5).max() <= 0.5
        source = _source_label(sample)
        expected = np.rint(np.array(source.array.shape) * np.array(source.spacing) / 1.5)
        inside = np.argwhere(image > -2000)
        assert ((inside.max(0) - inside.min(0) + 1) == expected).all()  # the volume, resampled
        assert len(inside) == expected.prod()  # ... as one box, padded around
        assert (label[image == -2000] == 0).all()


def test_train_crops_centre_on_random_present_classes(nnunet_root, tmp_path):
    dm = _module(nnunet_root, tmp_path, patch_size=48, flips=True)
    dm.setup("fit")
    chosen = set()
    for _ in range(30):
        centres = _bbox_centres(dm.datasets["train"][0]["label"])
        at_centre = [c for c, centre in centres.items() if np.abs(centre - 23.5).max() <= 0.5]
        assert at_centre  # the crop is centred on the bounding box of a class present
        chosen.update(at_centre)
    assert len(chosen) >= 3
    jittered = _module(nnunet_root, tmp_path, patch_size=48, flips=False, crop_jitter=3)
    jittered.setup("fit")
    offsets = set()
    for _ in range(20):
        centres = _bbox_centres(jittered.datasets["train"][0]["label"]).values()
        offset = min((centre - 23.5 for centre in centres), key=lambda o: np.abs(o).max())
        assert np.abs(offset).max() <= 3.5
        offsets.add(tuple(offset))
    assert len(offsets) > 3


def test_intensity_options(nnunet_root, tmp_path):
    whole = _module(nnunet_root, tmp_path, test_fraction=0.5)
    whole.setup("test")
    image = whole.datasets["test"][0]["image"]
    assert image.min() == -1000 and image.max() <= 1000  # CT: SAM-Med3D's clamp
    lidc = _module(
        nnunet_root, tmp_path, patch_size=48, intensity_range=(-1024.0, 300.0), rescale=True
    )
    lidc.setup("validate")
    patch = lidc.datasets["val"][0]["image"]  # padded with the range's low bound, 0
    assert patch.min() == 0 and patch.max() == 1 and patch[0, 0, 0, 0] == 0
    plain, scored = (
        _module(nnunet_root, tmp_path, intensity_range=(-200.0, 300.0), zscore=z) for z in (0, 1)
    )
    plain.setup("validate")
    scored.setup("validate")
    x = plain.datasets["val"][0]["image"].double()
    z = scored.datasets["val"][0]["image"].double()
    assert x.min() >= -200 and x.max() <= 300
    mask = x > 0
    assert abs(z[mask].mean()) < 1e-4 and abs(z[mask].std(unbiased=False) - 1) < 1e-4
    assert np.allclose(z, (x - x[mask].mean()) / x[mask].std(unbiased=False), atol=1e-4)


def test_second_pass_reads_no_nifti(root, tmp_path, monkeypatch):
    calls = []
    real = volume_cache.read_nifti
    monkeypatch.setattr(volume_cache, "read_nifti", lambda p: calls.append(Path(p)) or real(p))

    def one_pass():
        dm = NnUNetDataModule(str(root), num_workers=0, patch_size=16)  # default cache dir
        dm.setup("fit")
        for split in ("train", "val"):
            for i in range(len(dm.datasets[split])):
                dm.datasets[split][i]

    one_pass()
    assert len(calls) == 2 * 5  # image and label of each train / val case, once
    cache = root / ".segfm_cache"
    assert len(list(cache.iterdir())) == 1 and list(cache.rglob("*.image.npy"))
    calls.clear()
    one_pass()
    one_pass()
    assert calls == []
    label = root / "labelsTr" / "synth_000.nii.gz"
    os.utime(label, ns=(label.stat().st_atime_ns, label.stat().st_mtime_ns + 10**9))
    one_pass()
    assert sorted(p.name for p in calls) == ["synth_000.nii.gz", "synth_000_0000.nii.gz"]
    assert len(list(cache.rglob("synth_000_0000.*.image.npy"))) == 1  # the old one is gone
    NnUNetDataModule(str(root), num_workers=0, spacing=None).setup("validate")
    assert len(list(cache.iterdir())) == 2  # other settings, other folder


def test_cache_built_by_worker_processes(nnunet_root, tmp_path):
    dm = NnUNetDataModule(str(nnunet_root), num_workers=2, cache_dir=str(tmp_path / "c"))
    dm.setup("predict")
    assert len(list((tmp_path / "c").glob("*/imagesTs/*.json"))) == 2
    assert dm.datasets["predict"][1]["image"].ndim == 4


def test_unwritable_cache_is_a_data_error(nnunet_root, tmp_path):
    (tmp_path / "file").write_text("")
    dm = _module(nnunet_root, tmp_path, cache_dir=str(tmp_path / "file" / "cache"))
    with pytest.raises(DataError, match="set cache_dir"):
        dm.setup("fit")


def test_whole_volumes_map_back_exactly_without_resampling(nnunet_root, tmp_path):
    dm = _module(nnunet_root, tmp_path, spacing=None, test_fraction=0.5)
    dm.setup("test")
    assert len(dm.datasets["test"]) == 3
    for sample in dm.datasets["test"]:
        assert set(sample) == SAMPLE_KEYS and set(sample["meta"]) == VOLUME_META
        assert sample["image"].shape == sample["label"].shape and sample["image"].ndim == 4
        meta, source = sample["meta"], _source_label(sample)
        assert meta["source_shape"] == source.array.shape
        assert np.array_equal(meta["source_affine"], source.affine)
        assert np.allclose(sample["spacing"], source.spacing)  # this affine needs no permutation
        back = resample_nearest(
            sample["label"][0].numpy(), meta["affine"], meta["source_affine"], meta["source_shape"]
        )
        assert np.array_equal(back, source.array)
        hu = np.clip(read_nifti(meta["source"]).array, -1000, 1000)
        image = resample_nearest(
            sample["image"][0].numpy(), meta["affine"], source.affine, hu.shape
        )
        assert np.array_equal(image, hu)
    batch = next(iter(dm.test_dataloader()))
    assert batch["image"].shape[0] == 1


def _dice_per_class(a, b):
    return {c: 2 * ((a == c) & (b == c)).sum() / ((a == c).sum() + (b == c).sum()) for c in NAMES}


def test_whole_volumes_at_1_5_mm_map_back(nnunet_root, tmp_path):
    dm = _module(nnunet_root, tmp_path, test_fraction=0.5)
    dm.setup("test")
    for sample in dm.datasets["test"]:
        meta, source = sample["meta"], _source_label(sample)
        expected = np.rint(np.array(source.array.shape) * np.array(source.spacing) / 1.5)
        assert (
            sample["image"].shape[1:] == tuple(expected) and sample["spacing"].tolist() == [1.5] * 3
        )
        back = resample_nearest(
            sample["label"][0].numpy(), meta["affine"], meta["source_affine"], meta["source_shape"]
        )
        dice = _dice_per_class(back, source.array)
        # 0.8 mm in-plane sources lose detail at 1.5 mm; these organs are only 100-1700 voxels
        assert dice[LABELS["liver"]] > 0.9 and min(dice.values()) > 0.7
        assert (back == source.array).mean() > 0.97


def test_coarse_sources_map_back_exactly_at_1_5_mm(tmp_path):
    raw = make_dataset(tmp_path / "coarse", 2, 3, (24, 28), (6, 8), (1.6, 2.0), (2.0, 3.0))
    dm = _module(raw, tmp_path, val_fraction=0, test_fraction=0.5)
    dm.setup("test")
    sample = dm.datasets["test"][0]
    meta, source = sample["meta"], _source_label(sample)
    back = resample_nearest(
        sample["label"][0].numpy(), meta["affine"], meta["source_affine"], meta["source_shape"]
    )
    present = [c for c in NAMES if (source.array == c).any()]
    assert len(present) >= 3
    assert all(_dice_per_class(back, source.array)[c] > 0.95 for c in present)
    assert np.array_equal(back, source.array)  # a finer grid loses nothing


def test_predict_images_ts_without_labels(nnunet_root, tmp_path):
    dm = _module(nnunet_root, tmp_path)
    dm.setup("predict")
    assert _ids(dm, "predict") == TEST_CASES
    sample = dm.datasets["predict"][0]
    assert "label" not in sample and set(sample["meta"]) == VOLUME_META
    assert sample["meta"]["source"].endswith("imagesTs/test_000_0000.nii.gz")


def test_labels_ts_is_the_test_split(root, tmp_path):
    for case in TEST_CASES:
        image = read_nifti(root / "imagesTs" / f"{case}_0000.nii.gz")
        label = np.zeros(image.array.shape, dtype=np.uint8)
        label[2:5, 10:20, 10:20] = 2
        write_nifti(root / "labelsTs" / f"{case}.nii.gz", label, image.affine)
    dm = _module(root, tmp_path)
    dm.setup("test")
    dm.setup("predict")
    dm.setup("fit")
    assert _ids(dm, "test") == _ids(dm, "predict") == TEST_CASES
    assert all(np.unique(s["label"]).tolist() == [0, 2] for s in dm.datasets["test"])
    assert sorted(_ids(dm, "train") + _ids(dm, "val")) == CASES  # no imagesTr case held out


def test_folds_of_splits_final(root, tmp_path):
    for fold in (0, 1):
        dm = _module(root, tmp_path, fold=fold)
        dm.setup("fit")
        assert (_ids(dm, "train"), _ids(dm, "val")) == (FOLDS[fold]["train"], FOLDS[fold]["val"])
    dm.setup("predict")
    assert _ids(dm, "predict") == TEST_CASES
    with pytest.raises(DataError, match=r"imagesTs \+ labelsTs"):
        dm.setup("test")
    with pytest.raises(DataError, match=r"has 2 folds, so fold must be in 0\.\.1, not 2"):
        _module(root, tmp_path, fold=2).setup("fit")
    (root / "splits_final.json").write_text(json.dumps([{"train": ["nope"], "val": []}]))
    with pytest.raises(DataError, match="'nope'"):
        _module(root, tmp_path, fold=0).setup("fit")
    (root / "splits_final.json").unlink()
    with pytest.raises(DataError, match=r"splits_final\.json does not exist"):
        _module(root, tmp_path, fold=0).setup("fit")


def test_random_split_split_file_and_max_cases(nnunet_root, tmp_path):
    dm = _module(nnunet_root, tmp_path)
    dm.setup("fit")
    dm.setup("test")
    splits = [_ids(dm, s) for s in ("train", "val", "test")]
    assert sorted(c for split in splits for c in split) == CASES and [len(s) for s in splits] == [
        4,
        1,
        1,
    ]
    again = _module(nnunet_root, tmp_path)
    again.setup("fit")
    assert _ids(again, "train") == splits[0]
    path = tmp_path / "split.json"
    path.write_text(json.dumps({"train": CASES[:2], "val": CASES[2:3], "test": CASES[5:]}))
    dm = _module(nnunet_root, tmp_path, split_file=str(path), max_cases=1)
    dm.setup("fit")
    dm.setup("test")
    assert (_ids(dm, "train"), _ids(dm, "val"), _ids(dm, "test")) == (
        CASES[:1],
        CASES[2:3],
        CASES[5:],
    )


def test_data_errors(root, tmp_path):
    (root / "labelsTr" / "synth_001.nii.gz").unlink()
    with pytest.raises(DataError, match=r"synth_001_0000\.nii\.gz has no label"):
        _module(root, tmp_path).setup("fit")
    (root / "imagesTr" / "synth_001_0000.nii.gz").unlink()
    image = read_nifti(root / "imagesTr" / "synth_002_0000.nii.gz")
    label = root / "labelsTr" / "synth_002.nii.gz"
    write_nifti(label, np.zeros(image.array.shape, dtype=np.uint8)[:, 1:], image.affine)
    with pytest.raises(DataError, match=r"synth_002\.nii\.gz has shape .* export the label"):
        _module(root, tmp_path, split_file=None, val_fraction=0, test_fraction=0).setup("fit")
    write_nifti(label, np.zeros(image.array.shape, dtype=np.uint8), image.affine)
    dm = _module(root, tmp_path, val_fraction=0, test_fraction=0)
    with pytest.warns(UserWarning, match="synth_002 is left out of 'train'"):
        dm.setup("fit")
    assert "synth_002" not in _ids(dm, "train") and len(_ids(dm, "train")) == 4
    (root / "dataset.json").unlink()
    with pytest.raises(DataError, match=r"dataset\.json"):
        _module(root, tmp_path).setup("fit")
    empty = tmp_path / "empty"
    for folder in ("imagesTr", "labelsTr"):
        (empty / folder).mkdir(parents=True)
    (empty / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "a": 1}}))
    with pytest.raises(DataError, match=r"has no <case>_0000\.nii\.gz image"):
        _module(empty, tmp_path).setup("fit")


def test_bad_arguments():
    for kwargs in ({"patch_size": 0}, {"spacing": 0.0}, {"intensity_range": (1.0, 0.0)}):
        with pytest.raises(ValueError, match="invalid"):
            NnUNetDataModule("x", **kwargs)
    with pytest.raises(ValueError, match="fold"):
        NnUNetDataModule("x", fold=-1)


def test_nnunet_readers(nnunet_root, tmp_path):
    assert list(find_images(nnunet_root / "imagesTs")) == TEST_CASES
    assert channel_names({"channel_names": {"0": "CT", "1": "PET"}}) == {0: "CT", 1: "PET"}
    assert channel_names({"modality": {"0": "MRI"}}) == {0: "MRI"}  # nnU-Net v1
    assert read_fold(nnunet_root / "splits_final.json", 1, CASES) == FOLDS[1]
    bad = tmp_path / "splits.json"
    bad.write_text(json.dumps({"train": CASES}))
    with pytest.raises(DataError, match="not a list"):
        read_fold(bad, 0, CASES)


def test_class_folder_items(class_folder_root):
    names, items = find_items(class_folder_root)
    assert names == sorted(CLASSES)
    assert len(items) == 2 * 5
    assert items[0].item_id == "kidney_left/ct_synth/synth_000"
    assert {i.dataset for i in items} == {"ct_synth", "mr_synth"}


def test_class_folder_samples(class_folder_root, tmp_path):
    ids = [f"{c}/{d}/synth_{i:03d}" for c in CLASSES for d, i in (("ct_synth", 0), ("ct_synth", 1))]
    split = {"train": ids, "val": [], "test": [f"{c}/mr_synth/synth_004" for c in CLASSES]}
    split["test"].append("liver/ct_synth/synth_003")
    path = tmp_path / "split.json"
    path.write_text(json.dumps(split))
    dm = _module(
        class_folder_root, tmp_path, ClassFolderDataModule, split_file=str(path), patch_size=32
    )
    dm.setup("fit")
    dm.setup("test")
    classes = {1: ClassInfo("kidney_left"), 2: ClassInfo("liver")}
    for sample in dm.datasets["train"]:
        assert sample["classes"] == classes and set(sample) == SAMPLE_KEYS
        class_id = 1 if sample["meta"]["case_id"].startswith("kidney_left/") else 2
        assert np.unique(sample["label"]).tolist() == [0, class_id]
    by_id = {s["meta"]["case_id"]: s for s in dm.datasets["test"]}
    ct, mr = by_id["liver/ct_synth/synth_003"], by_id["liver/mr_synth/synth_004"]
    assert ct["image"].min() == -1000  # "ct_" datasets are clamped
    assert mr["image"].min() < -1000  # others keep their values (synthetic air reaches -1024)
    assert mr["meta"]["dataset"] == "mr_synth"
    source = read_nifti(class_folder_root / "liver" / "mr_synth" / "labelsTr" / "synth_004.nii.gz")
    meta = mr["meta"]
    back = resample_nearest(
        mr["label"][0].numpy(), meta["affine"], meta["source_affine"], meta["source_shape"]
    )
    assert set(np.unique(back)) == {0, 2}
    assert (
        2 * ((back > 0) & (source.array > 0)).sum() / ((back > 0).sum() + source.array.sum()) > 0.85
    )


def test_class_folder_errors(class_folder_root, tmp_path):
    root = shutil.copytree(class_folder_root, tmp_path / "classes")
    _module(root, tmp_path, ClassFolderDataModule, cache_dir=None).setup("validate")
    assert (root / ".segfm_cache").is_dir() and find_items(root)[0] == sorted(CLASSES)
    (root / "liver" / "mr_synth" / "labelsTr" / "synth_004.nii.gz").unlink()
    with pytest.raises(DataError, match=r"synth_004\.nii\.gz has no mask"):
        _module(root, tmp_path, ClassFolderDataModule).setup("fit")
    shutil.rmtree(root / "liver" / "mr_synth" / "labelsTr")
    with pytest.raises(DataError, match="needs imagesTr/ and labelsTr/"):
        _module(root, tmp_path, ClassFolderDataModule).setup("fit")
    (tmp_path / "nothing").mkdir()
    with pytest.raises(DataError, match="no <class>/<dataset>/imagesTr"):
        _module(tmp_path / "nothing", tmp_path, ClassFolderDataModule).setup("fit")
