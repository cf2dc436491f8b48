import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from data_tools.process_2d import process
from segfm.data import NpzDataModule, PngSliceDataModule
from segfm.data.slice_augment import SliceAugment
from segfm.errors import DataError
from segfm.sample import ClassInfo
from tests.data.npz.data import EVAL, PROMPTS, TRAIN, label_of

SIZE = 32
ROOT = Path(__file__).resolve().parents[2]


def module(root, png=False, **kwargs):
    """NpzDataModule in mode slices25d, or (``png``) PngSliceDataModule, set up to fit."""
    args = {"image_size": SIZE, "batch_size": 4, "num_workers": 0, "val_fraction": 0.3}
    args |= {"augment": False} | kwargs
    if png:
        dm = PngSliceDataModule(str(root), **args)
    else:
        dm = NpzDataModule(str(root), mode="slices25d", **args)
    dm.setup("fit")
    return dm


def test_sample_contract(npz_root):
    dm = module(npz_root)
    sample = dm.datasets["train"][0]
    assert sample["image"].shape == (3, SIZE, SIZE) and sample["image"].dtype == torch.float32
    assert sample["label"].shape == (1, SIZE, SIZE) and sample["label"].dtype == torch.int64
    assert sample["spacing"].shape == (2,) and sample["spacing"].dtype == torch.float32
    assert 0 <= sample["image"].min() and sample["image"].max() <= 255
    meta = sample["meta"]
    assert set(meta) >= {"case_id", "dataset", "source", "instance", "slice_index", "axis"}
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 3, SIZE, SIZE) and batch["label"].shape == (4, 1, SIZE, SIZE)


def test_every_slice_of_every_volume_and_split_by_volume(npz_root):
    dm = module(npz_root)
    train, val = dm.datasets["train"].items, dm.datasets["val"].items
    train_cases, val_cases = {i.case.case_id for i in train}, {i.case.case_id for i in val}
    assert train_cases and val_cases and not train_cases & val_cases
    shapes = {f"{d}/{n}": c.shape for d, cases in TRAIN.items() for n, c in cases.items()}
    assert train_cases | val_cases == set(shapes)
    assert len(train) + len(val) == sum(s[0] for s in shapes.values())  # axis 0 everywhere
    assert all(i.png is None for i in train)


def test_all_classes_are_offered_so_absent_ones_are_negatives(npz_root):
    dm = module(npz_root, datasets=["CT_Abd"], val_fraction=0)
    ds = dm.datasets["train"]
    index = next(k for k, i in enumerate(ds.items) if i.case.path.stem == "CT_Abd_001")
    sample = ds[index + 3]  # slice 3 of CT_Abd_001 holds class 1 only
    assert set(sample["label"].unique().tolist()) == {0, 1}
    expected = {
        int(k): ClassInfo(v[0], tuple(v)) for k, v in PROMPTS["CT_Abd"].items() if k.isdigit()
    }
    assert sample["classes"] == expected


def test_instance_dataset_keeps_instance_ids(npz_root):
    dm = module(npz_root, datasets=["PET_Lesion"], val_fraction=0)
    ds = dm.datasets["train"]
    index = next(k for k, i in enumerate(ds.items) if i.case.path.stem == "PET_Lesion_001")
    sample = ds[index + 7]
    assert sample["meta"]["instance"] is True and set(sample["classes"]) == {1}
    assert set(sample["label"].unique().tolist()) == {0, 5}


def test_on_the_fly_equals_the_tool_pngs(npz_root, tmp_path):
    root = shutil.copytree(npz_root, tmp_path / "cvpr")
    process(root, size=SIZE, workers=0, progress=False)
    fly, png = module(root), module(root, png=True)
    for split in ("train", "val"):
        a, b = fly.datasets[split], png.datasets[split]
        assert [i.name for i in a.items] == [i.name for i in b.items]
        assert all(i.png is not None for i in b.items)
        for k in range(len(a)):
            x, y = a[k], b[k]
            assert torch.equal(x["image"], y["image"]), a.items[k].name
            assert torch.equal(x["label"], y["label"]), a.items[k].name
            assert torch.equal(x["spacing"], y["spacing"])


def test_processed_source_needs_the_tool_output(npz_root):
    with pytest.raises(DataError, match="process_2d"):
        module(npz_root, png=True)
    report = PngSliceDataModule(str(npz_root), image_size=SIZE).verify()
    assert report.errors and all("process_2d" in p.fix for p in report.errors), report.text()


def test_png_verify_reads_every_listed_png(npz_root, tmp_path):
    root = shutil.copytree(npz_root, tmp_path / "cvpr")
    process(root, size=SIZE, workers=0, progress=False, datasets=["CT_Abd"])
    dm = PngSliceDataModule(str(root), datasets=["CT_Abd"], image_size=SIZE)
    assert dm.verify().errors == []
    png = sorted((root / "CT_Abd").glob("processed*/train/*.png"))[0]
    png.write_bytes(b"not a png")
    mask = sorted((root / "CT_Abd").glob("processed*/train_mask/*.png"))[1]
    mask.unlink()
    report = dm.verify()
    assert sorted(p.file for p in report.errors) == sorted([str(png), str(mask)]), report.text()
    assert all("process_2d" in p.fix for p in report.errors)


def test_labels_match_the_fixture_at_native_size(npz_root):
    dm = module(npz_root, datasets=["CT_Abd"], val_fraction=0, image_size=40)
    ds = dm.datasets["train"]
    case = TRAIN["CT_Abd"]["CT_Abd_000"]  # (10, 40, 36): padded 2 + 2 columns to 40 x 40
    index = next(k for k, i in enumerate(ds.items) if i.case.path.stem == "CT_Abd_000")
    for z in range(case.shape[0]):
        label = ds[index + z]["label"][0].numpy()
        assert np.array_equal(label[:, 2:38], label_of(case)[z])
        assert not label[:, :2].any() and not label[:, 38:].any()


def test_augmentation_keeps_ranges_and_ids(npz_root):
    torch.manual_seed(0)
    dm = module(npz_root, datasets=["PET_Lesion"], val_fraction=0, augment=True)
    ds = dm.datasets["train"]
    assert isinstance(ds.augment, SliceAugment)
    for k in range(0, len(ds), 3):
        sample = ds[k]
        assert 0 <= sample["image"].min() and sample["image"].max() <= 255
        assert sample["label"].dtype == torch.int64
        assert set(sample["label"].unique().tolist()) <= {0, 1, 2, 3, 5}


def test_augment_changes_images_noise_is_signed():
    torch.manual_seed(1)
    image = torch.full((3, 16, 16), 128.0)
    image[1], image[2] = 100.0, 150.0
    label = torch.zeros(1, 16, 16, dtype=torch.long)
    label[0, 4:8, 4:12] = 300
    augment = SliceAugment(prob=1.0, salt_pepper=False, swap=0.0, crop_ratio=0.0, shift_ratio=0.0)
    out, lab = augment(image, label)
    assert not torch.equal(out, image)
    assert abs(float((out - image).mean())) < 5  # wrapped uint8 noise would add ~+128 on average
    assert lab.sum() == label.sum() and set(lab.unique().tolist()) == {0, 300}
    swapped, _ = SliceAugment(prob=0.0, swap=1.0)(image, label)
    assert torch.equal(swapped, image[[0, 2, 1]])
    kept, same = SliceAugment(prob=0.0, swap=0.0)(image, label)
    assert torch.equal(kept, image) and torch.equal(same, label)


def test_test_split_gives_whole_volumes_for_the_harness(npz_root):
    dm = NpzDataModule(str(npz_root), mode="slices25d", image_size=SIZE, num_workers=0)
    dm.setup("test")
    ds = dm.datasets["test"]
    assert len(ds) == sum(len(c) for c in EVAL.values())
    sample = ds[0]
    assert sample["image"].ndim == 4 and sample["image"].shape[0] == 1
    assert {"file_name", "text_prompts", "instance", "case_id"} <= set(sample["meta"])
    assert next(iter(dm.test_dataloader()))["image"].ndim == 5


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("image_size", 0),
        ("val_fraction", 1.0),
        ("mode", "png"),
        ("max_cases", 0),
    ],
)
def test_bad_arguments(name, value):
    with pytest.raises(ValueError, match=name):
        NpzDataModule("x", **{name: value})
    if name != "mode":
        with pytest.raises(ValueError, match=name):
            PngSliceDataModule("x", **{name: value})


def test_config_file_builds_the_module(npz_root):
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_subclass_arguments(NpzDataModule, "data")
    config = yaml.safe_load((ROOT / "configs" / "data" / "npz_slices25d.yaml").read_text())
    config["init_args"]["root"] = str(npz_root)
    cfg = parser.parse_object({"data": config})
    dm = parser.instantiate_classes(cfg)["data"]
    assert isinstance(dm, NpzDataModule) and dm.mode == "slices25d"
    assert dm.image_size == 512 and dm.batch_size == 8


def test_label_ids_without_prompts_are_reported(tmp_path):
    import json

    (tmp_path / "DS" / "train").mkdir(parents=True)
    (tmp_path / "class_prompts.json").write_text(json.dumps({"DS": {"1": ["a"]}}))
    gts = np.zeros((2, 8, 8), np.uint8)
    gts[1, 2:4, 2:4] = 4
    np.savez_compressed(
        tmp_path / "DS" / "train" / "v.npz",
        imgs=np.zeros((2, 8, 8), np.uint8),
        gts=gts,
        spacing=np.ones(3),
    )
    ds = module(tmp_path, val_fraction=0, image_size=8).datasets["train"]
    assert ds[0]["label"].max() == 0
    with pytest.raises(DataError, match=r"v\.npz holds label ids \[4\]"):
        ds[1]
