import io
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from segfm.data.datamodules.npz import NpzDataModule
from segfm.data.io.npz_cvpr import (
    NpzCase,
    class_infos,
    dataset_of_file,
    find_evaluation_cases,
    read_case,
    read_class_prompts,
    write_prediction_npz,
)
from segfm.errors import DataError
from segfm.sample import ClassInfo
from tests.data.npz.data import (
    EVAL,
    PROMPTS,
    TRAIN,
    WITH_PROMPTS,
    WITHOUT_MASK,
    Case,
    box_dict,
    image_of,
    label_of,
)

ALL_TRAIN = {f"{d}/{n}": case for d, cases in TRAIN.items() for n, case in cases.items()}
ALL_EVAL = {f"{d}/{n}": case for d, cases in EVAL.items() for n, case in cases.items()}


def _module(root, **kwargs):
    return NpzDataModule(str(root), batch_size=2, num_workers=0, **kwargs)


def _ids(dataset):
    return set(getattr(dataset, "cases", None) or {c for c, _ in dataset.slices})


@pytest.fixture
def root(npz_root, tmp_path):
    """A private copy of the session root, free to damage."""
    return shutil.copytree(npz_root, tmp_path / "root")


def _write_prompts(root, content):
    (root / "class_prompts.json").write_text(json.dumps(content))


# --- class_prompts.json ---------------------------------------------------------------------


def test_class_prompts_read_and_classes(npz_root):
    entries = read_class_prompts(npz_root / "class_prompts.json")
    assert sorted(entries) == ["CT_Abd", "MR_Brain", "PET_Lesion"]
    assert entries["MR_Brain"].classes == {
        3: ("Left cochlea", "Left cochlea in brain MR"),
        7: ("Tumour", "Tumour in brain MR"),
    }
    assert not entries["MR_Brain"].instance and entries["PET_Lesion"].instance
    assert class_infos(entries["CT_Abd"])[2] == ClassInfo(
        "Spleen", ("Spleen", "Spleen in abdominal CT")
    )
    assert class_infos(entries["PET_Lesion"]) == {
        1: ClassInfo("Lesion", ("Lesion", "Lesion in whole-body PET"))
    }


@pytest.mark.parametrize(
    ("entry", "match"),
    [
        ({"1": ["a"], "2": ["b"], "instance_label": 1}, "exactly one"),
        ({"instance_label": 0}, "0 classes"),
        ({"liver": ["a"]}, "not a class id"),
        ({"0": ["a"]}, "not a class id"),
        ({"1": []}, "non-empty list"),
        ({"1": [3]}, "non-empty list"),
        ({"1": ["a"], "instance_label": 2}, "instance_label 2"),
        (["a"], "is a list"),
    ],
)
def test_class_prompts_rules(tmp_path, entry, match):
    path = tmp_path / "class_prompts.json"
    path.write_text(json.dumps({"DS": entry}))
    with pytest.raises(DataError, match=match) as err:
        read_class_prompts(path)
    assert str(path) in str(err.value)


def test_class_prompts_defaults_and_unreadable(tmp_path):
    path = tmp_path / "class_prompts.json"
    path.write_text(json.dumps({"DS": {"4": "Kidney"}}))
    entry = read_class_prompts(path)["DS"]
    assert entry.classes == {4: ("Kidney",)} and entry.instance is False
    path.write_text(json.dumps({"Cells": {"2": ["Cell"], "instance_label": 1}}))
    entry = read_class_prompts(path)["Cells"]
    assert entry.instance and class_infos(entry) == {1: ClassInfo("Cell", ("Cell",))}
    path.write_text("{not json")
    with pytest.raises(DataError, match="cannot read"):
        read_class_prompts(path)
    path.write_text("{}")
    with pytest.raises(DataError, match="lists no dataset"):
        read_class_prompts(path)


# --- folders and reading --------------------------------------------------------------------


def test_dataset_of_file_takes_longest_prefix():
    names = ["CT", "CT_Abd", "CT_AbdomenCT1K", "MR"]
    assert dataset_of_file("CT_AbdomenCT1K_001.npz", names) == "CT_AbdomenCT1K"
    assert dataset_of_file("CT_Abd_7.npz", names) == "CT_Abd"
    assert dataset_of_file("CT_Lung_1.npz", names) == "CT"
    assert dataset_of_file("PET_1.npz", names) is None


def test_evaluation_cases_per_dataset_and_at_top(npz_root):
    cases = find_evaluation_cases(npz_root, ["CT_Abd", "MR_Brain", "PET_Lesion"], PROMPTS)
    assert [c.case_id for c in cases] == sorted(ALL_EVAL)
    by_id = {c.case_id: c for c in cases}
    top = by_id["MR_Brain/MR_Brain_t00"]
    assert top.path == npz_root / "test" / "MR_Brain_t00.npz"
    assert top.mask == npz_root / "test_mask" / "MR_Brain_t00.npz"
    assert by_id["MR_Brain/MR_Brain_t01"].mask is None
    assert by_id["CT_Abd/CT_Abd_t01"].mask == npz_root / "CT_Abd" / "test_mask" / "CT_Abd_t01.npz"
    only_mr = find_evaluation_cases(npz_root, ["MR_Brain"], PROMPTS)
    assert {c.case_id for c in only_mr} == {"MR_Brain/MR_Brain_t00", "MR_Brain/MR_Brain_t01"}


def test_read_case_arrays_and_prompts(npz_root):
    case = EVAL["CT_Abd"]["CT_Abd_t00"]
    folder = npz_root / "CT_Abd"
    npz_case = NpzCase(
        "CT_Abd", folder / "test" / "CT_Abd_t00.npz", folder / "test_mask" / "CT_Abd_t00.npz"
    )
    volume = read_case(npz_case, read_prompts=True)
    np.testing.assert_array_equal(volume.image, image_of(case))
    np.testing.assert_array_equal(volume.label, label_of(case))
    np.testing.assert_allclose(volume.spacing, case.spacing)
    assert volume.boxes == [box_dict(case.objects[1]), box_dict(case.objects[2])]
    assert volume.boxes[0] == {
        "z_min": 2, "z_max": 6, "z_mid": 4, "z_mid_x_min": 4, "z_mid_y_min": 4,
        "z_mid_x_max": 15, "z_mid_y_max": 19,
    }  # fmt: skip
    assert volume.text_prompts == {1: "Liver in abdominal CT", 2: "Spleen in abdominal CT"}
    plain = read_case(npz_case)  # prompts are read only on request
    assert plain.boxes is None and plain.text_prompts is None


def _write_npz_with_raw_member(path, arrays, name, raw):
    """An npz whose member ``name`` is an object .npy holding the pickle bytes ``raw``."""
    with zipfile.ZipFile(path, "w") as zf:
        for key, value in arrays.items():
            buffer = io.BytesIO()
            np.save(buffer, value)
            zf.writestr(f"{key}.npy", buffer.getvalue())
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(
            header, {"descr": "|O", "fortran_order": False, "shape": ()}
        )
        zf.writestr(f"{name}.npy", header.getvalue() + raw)


def test_object_arrays_are_never_unpickled_unless_asked(tmp_path):
    # a pickle that calls a function of a module that does not exist: unpickling fails loudly
    raw = b"\x80\x02csegfm_no_such_module\nboom\n)R."
    case = Case((4, 8, 8), (1.0, 1.0, 1.0), {1: (0, 2, 0, 4, 0, 4)})
    path = tmp_path / "X_0.npz"
    arrays = {"imgs": image_of(case), "gts": label_of(case), "spacing": np.ones(3)}
    _write_npz_with_raw_member(path, arrays, "boxes", raw)
    volume = read_case(NpzCase("X", path))
    np.testing.assert_array_equal(volume.label, label_of(case))
    with pytest.raises(DataError, match=r"cannot read 'boxes' of .*X_0\.npz"):
        read_case(NpzCase("X", path), read_prompts=True)


def test_2d_case_reads_as_one_slice(tmp_path):
    path = tmp_path / "Micro_0.npz"
    imgs = np.arange(12, dtype=np.uint8).reshape(3, 4)
    gts = np.array([[0, 1, 1, 0], [0, 2, 2, 0], [0, 0, 0, 0]], dtype=np.uint16)
    np.savez_compressed(path, imgs=imgs, gts=gts, spacing=np.array([0.5, 0.25]))
    volume = read_case(NpzCase("Micro", path))
    assert volume.image.shape == (1, 3, 4) and volume.label.shape == (1, 3, 4)
    np.testing.assert_array_equal(volume.label[0], gts)
    np.testing.assert_allclose(volume.spacing, [1.0, 0.5, 0.25])
    np.savez_compressed(path, imgs=imgs[None], gts=gts[None], spacing=np.array([0.5, 0.25]))
    with pytest.raises(DataError, match="spacing"):  # two values only for a 2D image
        read_case(NpzCase("Micro", path))


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        ({"imgs": np.full((2, 4, 4), 300, np.uint16)}, r"values in \[300, 300\]"),
        ({"imgs": np.full((2, 4, 4), -1.0)}, "rescale them to 0-255"),
        ({"gts": np.zeros((2, 4, 5), np.uint8)}, "has gts of shape"),
        ({"gts": np.zeros((2, 4, 4), np.float32)}, "integer label ids"),
        ({"gts": np.full((2, 4, 4), -1, np.int16)}, "negative"),
        ({"spacing": np.array([1.0, 0.0, 1.0])}, "3 positive"),
        ({"spacing": np.array([1.0, 1.0])}, "3 positive"),
    ],
)
def test_read_case_rules(tmp_path, arrays, match):
    path = tmp_path / "X_0.npz"
    content = {
        "imgs": np.zeros((2, 4, 4), np.uint8),
        "gts": np.zeros((2, 4, 4), np.uint8),
        "spacing": np.ones(3),
    }
    np.savez_compressed(path, **(content | arrays))
    with pytest.raises(DataError, match=match) as err:
        read_case(NpzCase("X", path))
    assert "X_0.npz" in str(err.value)


def test_write_prediction_npz(tmp_path):
    segs = np.zeros((2, 3, 4), dtype=np.int64)
    segs[0, 1, 1:3] = 7
    path = tmp_path / "out" / "CT_Abd_t00.npz"
    write_prediction_npz(path, segs)
    with np.load(path, allow_pickle=False) as npz:
        assert npz.files == ["segs"] and npz["segs"].dtype == np.uint8
        np.testing.assert_array_equal(npz["segs"], segs)
    instances = segs.copy()
    instances[1, 2, 3] = 300  # would wrap to 44 as uint8
    steps = [np.zeros_like(segs), segs, instances]
    write_prediction_npz(path, instances, steps)
    with np.load(path, allow_pickle=False) as npz:
        assert npz["segs"].dtype == np.uint16 and int(npz["segs"][1, 2, 3]) == 300
        assert npz["all_segs"].shape == (3, 2, 3, 4)
        np.testing.assert_array_equal(npz["all_segs"][1], segs)
    assert sorted(p.name for p in path.parent.iterdir()) == ["CT_Abd_t00.npz"]  # no temporaries
    with pytest.raises(ValueError, match="non-negative"):
        write_prediction_npz(path, -segs)
    with pytest.raises(ValueError, match="all_segs"):
        write_prediction_npz(path, segs, [segs[:1]])


# --- the data module ------------------------------------------------------------------------


def test_volumes_fit_pools_datasets_and_splits_by_case(npz_root):
    dm = _module(npz_root, patch_size=16)
    dm.setup("fit")
    train = {c.case_id for c in dm.datasets["train"].cases}
    val = {c.case_id for c in dm.datasets["val"].cases}
    assert len(val) == 1 and not train & val and train | val == set(ALL_TRAIN)  # 10 * 0.1
    other = _module(npz_root, patch_size=16, split_seed=1)
    other.setup("fit")
    assert {c.case_id for c in other.datasets["val"].cases} != val or len(ALL_TRAIN) == 1
    limited = _module(npz_root, patch_size=16, max_cases=3)
    limited.setup("fit")
    assert len(limited.datasets["train"]) == 3


def test_volumes_patch_centres_the_largest_class_for_validation(npz_root, tmp_path):
    split = tmp_path / "split.json"
    ids = sorted(ALL_TRAIN)
    split.write_text(json.dumps({"train": ids[1:], "val": ids}))
    with pytest.raises(DataError, match="twice"):
        _module(npz_root, split_file=str(split)).setup("fit")
    split.write_text(json.dumps({"train": ids[:1], "val": ids[1:]}))
    dm = _module(npz_root, patch_size=40, split_file=str(split))
    dm.setup("fit")
    for sample, case_id in zip(dm.datasets["val"], ids[1:], strict=True):
        case = ALL_TRAIN[case_id]
        dataset = case_id.split("/")[0]
        assert sample["image"].shape == (1, 40, 40, 40) and sample["image"].dtype == torch.float32
        assert sample["label"].shape == (1, 40, 40, 40) and sample["label"].dtype == torch.int64
        np.testing.assert_allclose(sample["spacing"], case.spacing, rtol=1e-6)
        assert sample["meta"]["case_id"] == case_id and sample["meta"]["dataset"] == dataset
        assert sample["meta"]["instance"] == (dataset == "PET_Lesion")
        volumes = {i: np.prod(np.subtract(b[1::2], b[::2])) for i, b in case.objects.items()}
        largest = max(volumes, key=volumes.get)
        label = sample["label"][0].numpy()
        where = np.nonzero(label == largest)
        assert len(where[0]) == volumes[largest]  # the whole object is inside the patch
        lo = np.array([w.min() for w in where])
        hi = np.array([w.max() for w in where])
        assert np.all(np.abs((lo + hi) / 2 - 19.5) <= 0.5)  # centred in the 40-voxel patch
        # image voxels of the object keep the stored intensity, padding is 0
        assert torch.all(sample["image"][0][label == largest] == 60 + 30 * (largest % 6))
        assert float(sample["image"].min()) == 0.0  # patch larger than the volume: padded


def test_volumes_classes_per_dataset(npz_root):
    dm = _module(npz_root, patch_size=8)
    dm.setup("fit")
    cases = dm.datasets["train"].cases
    seen = {}
    for i, case in enumerate(cases):
        sample = dm.datasets["train"][i]
        seen[case.dataset] = sample["classes"]
        assert set(np.unique(sample["label"])) - {0} <= set(ALL_TRAIN[case.case_id].objects)
    assert set(seen["MR_Brain"]) == {3, 7} and seen["MR_Brain"][7].name == "Tumour"
    assert set(seen["CT_Abd"]) == {1, 2}
    assert seen["PET_Lesion"] == {1: ClassInfo("Lesion", ("Lesion", "Lesion in whole-body PET"))}


def test_volumes_training_draws_every_id_and_flips(npz_root, tmp_path):
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": ["PET_Lesion/PET_Lesion_001"]}))
    objects = TRAIN["PET_Lesion"]["PET_Lesion_001"].objects
    plain = _module(npz_root, patch_size=8, flips=False, split_file=str(split))
    flipped = _module(npz_root, patch_size=8, flips=True, split_file=str(split))
    plain.setup("fit")
    flipped.setup("fit")
    centred, changed = set(), 0
    for seed in range(30):
        torch.manual_seed(seed)
        a = plain.datasets["train"][0]["label"][0].numpy()
        torch.manual_seed(seed)
        b = flipped.datasets["train"][0]["label"][0].numpy()
        # an 8-voxel patch centred on one instance holds it in its centre voxels
        centred.add(int(a[3, 3, 3]) or int(a[4, 4, 4]))
        variants = [np.flip(a, axes) for axes in [(), (0,), (1,), (2,), (0, 1), (0, 2), (1, 2)]]
        variants.append(np.flip(a, (0, 1, 2)))
        assert any(np.array_equal(b, v) for v in variants)
        changed += not np.array_equal(a, b)
    assert centred == set(objects) and changed > 0


def test_slices_fit(npz_root):
    dm = _module(npz_root, mode="slices", image_size=20, val_fraction=0.0)
    dm.setup("fit")
    train = dm.datasets["train"]
    expected = {
        (cid, z)
        for cid, case in ALL_TRAIN.items()
        for z in range(case.shape[0])
        if any(b[0] <= z < b[1] for b in case.objects.values())
    }
    assert {(c.case_id, z) for c, z in train.slices} == expected
    assert len(dm.datasets["val"]) == 0
    index = next(i for i, (c, z) in enumerate(train.slices) if c.case_id == "MR_Brain/MR_Brain_000")
    sample = train[index]
    case, z = train.slices[index]
    assert sample["image"].shape == (3, 20, 20) and sample["label"].shape == (1, 20, 20)
    assert float(sample["image"].min()) == 0.0 and float(sample["image"].max()) == 1.0
    assert torch.equal(sample["image"][0], sample["image"][2])
    np.testing.assert_allclose(sample["spacing"], [32 / 20, 40 / 20], rtol=1e-6)  # 1 mm pixels
    assert sample["meta"]["slice_index"] == z and sample["meta"]["path"] == str(case.path)
    assert set(np.unique(sample["label"])) <= {0, 3, 7}
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 3, 20, 20) and len(batch["meta"]) == 2


def test_test_stage_reads_evaluation_folders(npz_root):
    dm = _module(npz_root)
    dm.setup("test")
    samples = {s["meta"]["case_id"]: s for s in dm.datasets["test"]}
    assert set(samples) == set(ALL_EVAL)
    for case_id, sample in samples.items():
        case, name = ALL_EVAL[case_id], case_id.split("/")[1]
        assert sample["image"].shape == (1, *case.shape)
        np.testing.assert_array_equal(sample["image"][0].numpy(), image_of(case).astype(np.float32))
        assert sample["meta"]["file_name"] == f"{name}.npz"
        assert Path(sample["meta"]["source"]).name == f"{name}.npz"
        if name == WITHOUT_MASK:
            assert "label" not in sample
        else:
            np.testing.assert_array_equal(sample["label"][0].numpy(), label_of(case))
        if name not in WITH_PROMPTS:
            assert sample["meta"]["boxes"] is None and sample["meta"]["text_prompts"] is None
    mr = samples["MR_Brain/MR_Brain_t01"]  # no mask: boxes keyed by the text prompts' ids
    objects = EVAL["MR_Brain"]["MR_Brain_t01"].objects
    assert mr["meta"]["boxes"] == {3: box_dict(objects[3]), 7: box_dict(objects[7])}
    assert mr["meta"]["text_prompts"] == {3: "Left cochlea in brain MR", 7: "Tumour in brain MR"}
    assert set(mr["classes"]) == {3, 7} and mr["meta"]["dataset"] == "MR_Brain"
    assert samples["PET_Lesion/PET_Lesion_t00"]["meta"]["instance"] is True
    batch = next(iter(dm.test_dataloader()))
    assert batch["image"].shape[0] == 1 and batch["spacing"].shape == (1, 3)


def test_test_stage_boxes_fall_back_to_consecutive_ids(root):
    case = Case((4, 8, 8), (1.0, 1.0, 1.0), {1: (0, 2, 0, 4, 0, 4), 2: (2, 4, 4, 8, 4, 8)})
    boxes = [box_dict(b) for b in case.objects.values()]
    np.savez_compressed(
        root / "PET_Lesion" / "test" / "PET_Lesion_t09.npz",
        imgs=image_of(case), spacing=np.ones(3), boxes=boxes,
    )  # fmt: skip
    dm = _module(root, datasets=["PET_Lesion"])
    dm.setup("predict")
    sample = dm.datasets["predict"][1]
    assert sample["meta"]["boxes"] == {1: boxes[0], 2: boxes[1]}
    one_id = label_of(Case(case.shape, case.spacing, {1: case.objects[1]}))
    np.savez_compressed(root / "PET_Lesion" / "test_mask" / "PET_Lesion_t09.npz", gts=one_id)
    dm.setup("predict")  # now the mask is known: 2 boxes for 1 label id
    with pytest.raises(DataError, match=r"PET_Lesion_t09\.npz has 2 boxes but"):
        dm.datasets["predict"][1]


def test_test_falls_back_to_held_out_training_cases(root):
    for folder in [root / "test", root / "test_mask"] + [root / d / "test" for d in EVAL]:
        shutil.rmtree(folder, ignore_errors=True)
    with pytest.raises(DataError, match="no evaluation case"):
        _module(root).setup("test")
    dm = _module(root, test_fraction=0.2)
    dm.setup("fit")
    dm.setup("test")
    test = {s["meta"]["case_id"] for s in dm.datasets["test"]}
    assert len(test) == 2 and not test & {c.case_id for c in dm.datasets["train"].cases}
    sample = dm.datasets["test"][0]
    case = ALL_TRAIN[sample["meta"]["case_id"]]
    np.testing.assert_array_equal(sample["label"][0].numpy(), label_of(case))


def test_dataset_selection(npz_root):
    dm = _module(npz_root, datasets=["MR_Brain"], val_fraction=0.0)
    dm.setup("fit")
    dm.setup("test")
    assert {c.case_id for c in dm.datasets["train"].cases} == {
        i for i in ALL_TRAIN if i.startswith("MR_Brain/")
    }
    assert {c.case_id for c in dm.datasets["test"].cases} == {
        "MR_Brain/MR_Brain_t00",
        "MR_Brain/MR_Brain_t01",
    }
    with pytest.raises(DataError, match="'Nope' has no entry"):
        _module(npz_root, datasets=["Nope"]).setup("fit")


def test_folder_without_prompts_and_unknown_evaluation_file(root):
    (root / "US_Heart" / "train").mkdir(parents=True)
    with pytest.raises(DataError, match=r"US_Heart has no entry in .*class_prompts\.json"):
        _module(root).setup("fit")
    shutil.rmtree(root / "US_Heart")
    shutil.copy(root / "test" / "MR_Brain_t00.npz", root / "test" / "XR_Chest_0.npz")
    with pytest.raises(DataError, match=r"XR_Chest_0\.npz starts with no dataset name"):
        _module(root).setup("test")


def test_label_ids_need_prompts(root):
    prompts = json.loads(json.dumps(PROMPTS))
    del prompts["MR_Brain"]["3"]  # MR_Brain_000 and _002 hold id 3
    _write_prompts(root, prompts)
    with pytest.raises(DataError, match=r"MR_Brain_00[02]\.npz holds label ids \[3\]"):
        _module(root, mode="slices", image_size=16).setup("fit")
    dm = _module(root, patch_size=8, datasets=["MR_Brain"], val_fraction=0.0)
    dm.setup("fit")  # volumes: checked when a case is read
    index = [c.case_id for c in dm.datasets["train"].cases].index("MR_Brain/MR_Brain_000")
    with pytest.raises(DataError, match=r"MR_Brain_000\.npz holds label ids \[3\]"):
        dm.datasets["train"][index]
    prompts["PET_Lesion"]["2"] = ["Other"]
    _write_prompts(root, prompts)
    with pytest.raises(DataError, match="exactly one"):
        _module(root).setup("fit")


def test_setup_checks_headers(root):
    path = root / "CT_Abd" / "train" / "CT_Abd_001.npz"
    with np.load(path) as npz:
        np.savez_compressed(path, imgs=npz["imgs"], spacing=npz["spacing"])
    with pytest.raises(DataError, match=r"CT_Abd_001\.npz has no 'gts'"):
        _module(root).setup("fit")


def test_config_file_builds_the_module(npz_root):
    config = yaml.safe_load(Path("configs/data/npz.yaml").read_text())
    assert config["class_path"] == "segfm.data.NpzDataModule"
    args = config["init_args"] | {"root": str(npz_root), "num_workers": 0}
    dm = NpzDataModule(**args)
    dm.setup("test")
    assert len(dm.datasets["test"]) == len(ALL_EVAL)
