import json
import shutil

import numpy as np
import pytest
from PIL import Image

from data_tools.process_2d import main, process
from segfm.errors import DataError
from segfm.transforms.encoding25d import encode_volume, resample_label
from tests.data.npz.data import PROMPTS, TRAIN, image_of, label_of

SIZE = 48


@pytest.fixture(scope="module")
def processed(npz_root, tmp_path_factory):
    root = shutil.copytree(npz_root, tmp_path_factory.mktemp("p2d") / "cvpr")
    summary = process(root, ["CT_Abd", "PET_Lesion"], size=SIZE, workers=0, progress=False)
    return root, summary


def write_root(root, dataset, volumes, instance):
    """A root with one dataset of hand-made volumes {stem: (imgs, gts, spacing)}."""
    (root / dataset / "train").mkdir(parents=True)
    entry = {"1": ["Thing", "Thing in a test"], "instance_label": int(instance)}
    if not instance:
        entry["2"] = ["Other"]
    (root / "class_prompts.json").write_text(json.dumps({dataset: entry}))
    for stem, (imgs, gts, spacing) in volumes.items():
        np.savez_compressed(
            root / dataset / "train" / f"{stem}.npz", imgs=imgs, gts=gts, spacing=spacing
        )
    return root


def test_writes_every_slice_with_the_original_names(processed):
    root, summary = processed
    cases = {**TRAIN["CT_Abd"], **TRAIN["PET_Lesion"]}
    assert summary.written == sorted(f"{n[: n.rindex('_')]}/{n}" for n in cases)
    assert summary.skipped == []
    for stem, case in TRAIN["CT_Abd"].items():
        names = {f"{stem}_{i:03d}.png" for i in range(case.shape[0])}
        folder = root / "CT_Abd" / "processed"
        assert names <= {p.name for p in (folder / "train").iterdir()}
        assert names <= {p.name for p in (folder / "train_mask").iterdir()}
    assert not (root / "MR_Brain" / "processed").exists()  # not asked for
    assert not list(root.glob("*/processed_view*"))  # no near-cubic isotropic volume here


def test_train_json_lists_present_classes(processed):
    root, _ = processed
    content = json.loads((root / "CT_Abd" / "processed" / "train.json").read_text())
    assert content["class_prompts"] == PROMPTS["CT_Abd"]
    anns = {a["file_name"]: a for a in content["annotations"]}
    assert len(anns) == sum(c.shape[0] for c in TRAIN["CT_Abd"].values())
    for stem, case in TRAIN["CT_Abd"].items():
        label = label_of(case)
        for z in range(case.shape[0]):
            ann = anns[f"{stem}_{z:03d}.png"]
            assert ann["mask_file"] == ann["file_name"] and ann["split"] == "train"
            assert ann["instance_label"] == 0
            assert ann["class_ids"] == [int(i) for i in np.unique(label[z]) if i]
    pet = json.loads((root / "PET_Lesion" / "processed" / "train.json").read_text())
    case = TRAIN["PET_Lesion"]["PET_Lesion_001"]
    for z in range(case.shape[0]):
        ann = next(a for a in pet["annotations"] if a["file_name"] == f"PET_Lesion_001_{z:03d}.png")
        assert ann["class_ids"] == ([1] if label_of(case)[z].any() else [])
        assert ann["instance_label"] == 1


def test_pngs_hold_the_encoding_in_cv2_byte_order(processed):
    root, _ = processed
    case = TRAIN["CT_Abd"]["CT_Abd_000"]
    slices, geometry = encode_volume(image_of(case), size=SIZE)
    masks = resample_label(label_of(case), geometry)
    for z in (0, 4, case.shape[0] - 1):
        name = f"CT_Abd_000_{z:03d}.png"
        with Image.open(root / "CT_Abd" / "processed" / "train" / name) as png:
            assert png.mode == "RGB" and png.size == (SIZE, SIZE)
            rgb = np.asarray(png)
        assert np.array_equal(rgb[..., ::-1].transpose(2, 0, 1), slices[z].numpy())
        with Image.open(root / "CT_Abd" / "processed" / "train_mask" / name) as png:
            assert png.mode == "L"
            assert np.array_equal(np.asarray(png), masks[z].numpy())


def test_instance_ids_above_255_survive_in_16_bit_masks(tmp_path):
    gts = np.zeros((3, 8, 8), np.uint16)
    gts[0, :4, :4], gts[1, 4:, 4:], gts[2, :2] = 300, 1000, 7
    imgs = np.full((3, 8, 8), 50, np.uint8)
    root = write_root(tmp_path, "Cells", {"c0": (imgs, gts, np.ones(3) * 2)}, instance=True)
    process(root, size=16, workers=0, progress=False)
    values = set()
    for z in range(3):
        with Image.open(root / "Cells" / "processed" / "train_mask" / f"c0_{z:03d}.png") as png:
            assert png.mode == "I;16"
            values |= set(np.unique(np.asarray(png)).tolist())
    assert values == {0, 7, 300, 1000}


def test_near_cubic_isotropic_volumes_get_three_views(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (10, 11, 12)).astype(np.uint8)
    gts = np.zeros((10, 11, 12), np.uint8)
    gts[2:5, 3:6, 4:8] = 2
    root = write_root(tmp_path, "Iso", {"v": (imgs, gts, np.array([1.0, 1.0, 1.05]))}, False)
    process(root, size=12, workers=0, progress=False)
    for axis, n in ((1, 11), (2, 12)):
        folder = root / "Iso" / f"processed_view{axis}"
        names = sorted(p.name for p in (folder / "train").iterdir())
        assert names == [f"v_view{axis}_{i:03d}.png" for i in range(n)]
        anns = json.loads((folder / "train.json").read_text())["annotations"]
        assert [a["file_name"] for a in anns] == names
        present = [a["class_ids"] for a in anns]
        lo, hi = (3, 6) if axis == 1 else (4, 8)
        assert present == [[2] if lo <= i < hi else [] for i in range(n)]
    assert len(list((root / "Iso" / "processed" / "train").iterdir())) == 10


def test_a_second_run_skips_finished_volumes(processed, tmp_path):
    root = shutil.copytree(processed[0], tmp_path / "again")
    png = root / "CT_Abd" / "processed" / "train" / "CT_Abd_001_000.png"
    before = png.stat().st_mtime_ns
    summary = process(root, ["CT_Abd"], size=SIZE, workers=0, progress=False)
    assert summary.written == [] and len(summary.skipped) == len(TRAIN["CT_Abd"])
    assert png.stat().st_mtime_ns == before
    content = json.loads((root / "CT_Abd" / "processed" / "train.json").read_text())
    assert len(content["annotations"]) == sum(c.shape[0] for c in TRAIN["CT_Abd"].values())
    (root / "CT_Abd" / "processed" / ".done" / "CT_Abd_001.json").unlink()
    summary = process(root, ["CT_Abd"], size=SIZE, workers=0, progress=False)
    assert summary.written == ["CT_Abd/CT_Abd_001"]
    assert not list(root.rglob(".tmp-*"))


def test_command_line_with_two_workers(npz_root, tmp_path, capsys):
    root = shutil.copytree(npz_root, tmp_path / "cli")
    main(["--data", str(root), "--datasets", "MR_Brain", "--size", "16", "--workers", "2"])
    assert "3 volumes written" in capsys.readouterr().out
    assert (root / "MR_Brain" / "processed" / "train.json").is_file()


def test_unknown_dataset_and_bad_labels_are_reported(npz_root, tmp_path):
    with pytest.raises(DataError, match="Nope"):
        process(npz_root, ["Nope"], workers=0, progress=False)
    with pytest.raises(SystemExit, match="Nope"):
        main(["--data", str(npz_root), "--datasets", "Nope"])
    gts = np.full((2, 4, 4), 9, np.uint8)  # class 9 has no prompt
    root = write_root(
        tmp_path, "Bad", {"b": (np.zeros((2, 4, 4), np.uint8), gts, np.ones(3))}, False
    )
    with pytest.raises(DataError, match=r"b\.npz holds label ids \[9\]"):
        process(root, workers=0, progress=False)
