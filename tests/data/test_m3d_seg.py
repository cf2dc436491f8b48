import shutil
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import scipy.ndimage as ndi
import torch
import yaml
from scipy import sparse
from torch.utils.data import Dataset

from segfm.data.datamodules.m3d_seg import DatasetBatchSampler, M3DSegDataModule
from segfm.data.io.m3d_seg import (
    check_case,
    cleanse_pseudo_mask,
    mask_shape,
    read_dataset,
    read_image,
    read_label,
    read_masks,
    read_pseudo_mask,
    resize_nearest,
)
from segfm.data.loaders import ResumableDataLoader
from segfm.data.m3d_datasets import training_transform
from segfm.errors import DataError
from segfm.sample import collate
from tests.data.m3d_seg.data import (
    BOXES,
    CODES,
    PSEUDO_GRID,
    SHAPE,
    SPACING,
    TEST,
    build,
    label_volume,
)

SMALL = (12, 24, 24)  # (D, H, W) of training samples in these tests


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny M3D-Seg root of tests/data/m3d_seg/data.py (read-only)."""
    return build(tmp_path_factory.mktemp("m3d_seg"))


def _module(root: Path, **kwargs: object) -> M3DSegDataModule:
    args = {"dataset_codes": ["0000", "0001"], "batch_size": 2, "num_workers": 0}
    return M3DSegDataModule(str(root), **(args | {"spatial_size": SMALL} | kwargs))


# --- reader ------------------------------------------------------------------------------------


def test_both_json_variants(root: Path) -> None:
    for code, names in CODES.items():
        dataset = read_dataset(root, code)
        assert dataset.labels == {i + 1: n for i, n in enumerate(names)}
        assert sorted(c.name for c in dataset.test) == TEST[code]
        assert sorted(c.name for c in dataset.train + dataset.test) == sorted(BOXES[code])
        for case in dataset.train + dataset.test:
            assert case.image.is_file() and case.mask.is_file() and case.code == code
            assert check_case(case) == SHAPE[::-1]
    assert read_dataset(root, "0000").train[0].affine is not None
    assert read_dataset(root, "0001").train[0].affine is None


def test_moved_root_finds_files(tmp_path: Path) -> None:
    built = build(tmp_path / "a")
    moved = shutil.move(built, tmp_path / "b")  # the absolute paths of 0000 are stale now
    case = read_dataset(moved, "0000").train[0]
    assert case.image == Path(moved) / "0000" / case.name / "image.npy" and case.image.is_file()


def test_arrays_in_zyx_order(root: Path) -> None:
    case = read_dataset(root, "0001").train[0]
    expected = label_volume(BOXES["0001"][case.name]).transpose(2, 1, 0)
    assert (
        read_image(case.image).shape == expected.shape
        and read_image(case.image).dtype == np.float32
    )
    label = read_label(case.mask)
    assert label.dtype == np.int64 and np.array_equal(label, expected)
    masks = read_masks(case.mask)
    assert masks.shape == (3, *expected.shape)
    assert np.array_equal(masks, np.stack([expected == c for c in (1, 2, 3)]))
    assert mask_shape(case.mask) == (3, *SHAPE)


def test_overlapping_channels_warn_and_higher_id_wins(tmp_path: Path) -> None:
    onehot = np.zeros((2, 4, 3, 2), dtype=np.int32)
    onehot[0, :2] = 1
    onehot[1, 1:3] = 1  # x = 1 is in both classes
    path = tmp_path / "mask_(2, 4, 3, 2).npz"
    sparse.save_npz(path, sparse.csr_matrix(onehot.reshape(2, -1)))
    with pytest.warns(UserWarning, match=r"6 voxels belong to several classes"):
        label = read_label(path)
    assert label[:, :, 1].tolist() == [[2] * 3] * 2 and label[:, :, 0].tolist() == [[1] * 3] * 2


def test_reader_errors_name_file_and_fix(root: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"9999\.json does not exist.*build_dataset"):
        read_dataset(root, "9999")
    with pytest.raises(DataError, match=r"nothing\.npy does not exist"):
        read_image(tmp_path / "nothing.npy")
    bad = tmp_path / "mask_(2, 4, 4, 4).npz"
    sparse.save_npz(bad, sparse.csr_matrix(np.ones((2, 8))))
    with pytest.raises(DataError, match=r"holds a \(2, 8\) matrix.*\(2, 4, 4, 4\)"):
        read_label(bad)
    with pytest.raises(DataError, match="not named mask_"):
        mask_shape(tmp_path / "mask.npz")
    np.save(tmp_path / "flat.npy", np.zeros((2, 4, 4, 4), dtype=np.float32))
    with pytest.raises(DataError, match=r"flat\.npy has shape \(2, 4, 4, 4\)"):
        read_image(tmp_path / "flat.npy")
    copy = shutil.copytree(root / "0001", tmp_path / "r" / "0001")
    case = sorted(copy.glob("s_00/mask_*.npz"))[0]
    case.rename(case.with_name("mask_(3, 40, 36, 23).npz"))
    mangled = read_dataset(tmp_path / "r", "0001")
    with pytest.raises(DataError, match=r"does not exist; fix the path"):
        check_case(next(c for c in mangled.train if c.name == "s_00"))


def test_pseudo_mask_reading_and_nearest_resize(root: Path, tmp_path: Path) -> None:
    case = next(c for c in read_dataset(root, "0000").train if c.name == "case_a")
    regions = read_pseudo_mask(case.pseudo_mask)
    assert regions.shape == PSEUDO_GRID[::-1] and regions.dtype == np.int64
    np.save(tmp_path / "p.npy", np.load(case.pseudo_mask)[None])
    assert np.array_equal(read_pseudo_mask(tmp_path / "p.npy"), regions)  # (1, X, Y, Z) too
    grown = resize_nearest(regions, (24, 36, 40))
    assert grown.shape == (24, 36, 40) and set(np.unique(grown)) <= set(np.unique(regions))
    assert np.array_equal(resize_nearest(np.arange(4).reshape(1, 1, 4), (1, 1, 8))[0, 0],
                          [0, 0, 1, 1, 2, 2, 3, 3])  # fmt: skip


def _reference_cleanse(regions: np.ndarray, fraction: float = 0.001) -> np.ndarray:
    """SegVol's cleanse_pseudo_label, id by id on the whole volume (slow but plain)."""
    seg = regions.copy()
    threshold = seg.size * fraction
    for value in np.unique(seg):
        if (seg == value).sum() < threshold:
            seg[seg == value] = -1
    for value in np.unique(seg):
        if value == -1:
            continue
        mask = seg == value
        closed = ndi.binary_closing(ndi.binary_opening(mask))
        components, count = ndi.label(closed)
        sizes = ndi.sum(closed, components, range(count + 1))
        for small in np.where(sizes < threshold)[0]:
            closed[components == small] = False
        seg[mask] = -1
        seg[closed] = value
    return seg


def test_cleanse_matches_whole_volume_reference() -> None:
    rng = np.random.default_rng(1)
    seeds = rng.integers(0, (16, 48, 48), size=(40, 3))
    markers = np.zeros((16, 48, 48), dtype=np.int64)
    markers[tuple(seeds.T)] = np.arange(1, 41)
    _, nearest = ndi.distance_transform_edt(markers == 0, return_indices=True)
    regions = markers[tuple(nearest)] * 3  # compact regions with ids 3..120
    regions[rng.random(regions.shape) < 0.01] = 500  # scattered speckle: one id, tiny parts
    regions[:, :, :3] = -1  # padding
    expected = _reference_cleanse(regions)
    assert np.array_equal(cleanse_pseudo_mask(regions), expected)
    huge = np.where(regions == -1, -1, regions * 10**9 - 5)  # ids far beyond the voxel count
    assert np.array_equal(
        cleanse_pseudo_mask(huge), np.where(expected == -1, -1, expected * 10**9 - 5)
    )


def test_cleanse_planted_cases() -> None:
    regions = np.zeros((20, 40, 40), dtype=np.int64)  # 32000 voxels: threshold 32
    regions[:, :, 20:] = 1
    regions[:, :, :6] = -1  # padding
    regions[8:11, 8:11, 10:13] = 7  # 27 voxels: a tiny id inside region 0
    regions[5, 2:38, 3] = 8  # 36 voxels, one voxel thin, in the padding: removed by the opening
    out = cleanse_pseudo_mask(regions)
    assert out[9, 9, 11] == -1 and out[5, 20, 3] == -1
    assert set(np.unique(out)) == {-1, 0, 1} and (out[1:-1, 1:-1, 22:-1] == 1).all()
    assert (out[0] == -1).all()  # scipy's closing erodes at the volume's border, as in SegVol
    assert (out[:, :, :6] == -1).all()
    with pytest.raises(ValueError, match="3D"):
        cleanse_pseudo_mask(regions[None])


# --- data module -------------------------------------------------------------------------------


def test_training_samples(root: Path) -> None:
    module = _module(root)
    with pytest.warns(UserWarning, match="3 of 5 training cases have no pseudo_mask.npy"):
        module.setup("fit")
    dataset = module.datasets["train"]
    torch.manual_seed(0)
    for index in range(len(dataset)):
        sample = dataset[index]
        case = dataset.cases[index]
        assert set(sample) == {"image", "label", "pseudo_label", "classes", "spacing", "meta"}
        for key, dtype in (
            ("image", torch.float32),
            ("label", torch.int64),
            ("pseudo_label", torch.int64),
        ):
            assert sample[key].shape == (1, *SMALL) and sample[key].dtype == dtype
        assert 0 <= sample["image"].min() and sample["image"].max() <= 1.2  # min-max, +-0.1 shift
        assert set(sample["label"].unique().tolist()) <= set(range(len(CODES[case.code]) + 1))
        pseudo = set(sample["pseudo_label"].unique().tolist())
        if case.name in ("case_a", "case_b"):
            assert pseudo <= {-1, 0, 1, 2, 3} and len(pseudo - {-1}) >= 2
        else:
            assert pseudo == {-1}
        assert sample["classes"][1].name == CODES[case.code][0]
        assert sample["classes"][1].prompts == (CODES[case.code][0],)
        meta = sample["meta"]
        assert meta["case_id"] == f"{case.code}/{case.name}" and meta["dataset"] == case.code
        assert meta["original_shape"] == SHAPE and meta["instance"] is False
        assert sample["spacing"].shape == (3,) and (sample["spacing"] > 0).all()


def test_labels_resized_nearest_keep_valid_ids(root: Path) -> None:
    module = _module(root, spatial_size=(10, 29, 33), use_pseudo_masks=False)
    module.setup("fit")
    dataset = module.datasets["train"]
    torch.manual_seed(3)
    seen = set()
    for _ in range(3):
        for index in range(len(dataset)):
            sample = dataset[index]
            assert "pseudo_label" not in sample
            valid = set(range(len(CODES[dataset.cases[index].code]) + 1))
            ids = set(sample["label"].unique().tolist())
            assert ids <= valid  # area interpolation would give fractions rounded to other ids
            seen |= ids
    assert seen == {0, 1, 2, 3}


def test_transform_never_blends_label_ids() -> None:
    label = np.zeros((1, 20, 50, 50), dtype=np.int64)
    label[0, 5:15, 10:37, 13:41] = 3  # 0 and 3 side by side: area interpolation gives 1 and 2
    pseudo = np.where(np.arange(50) < 25, 5, 9) * np.ones((1, 20, 50, 1), dtype=np.int64)
    image = np.random.default_rng(0).random((1, 20, 50, 50)).astype(np.float32) + 0.1
    transform = training_transform(SMALL, pseudo=True, flip_prob=0.5, intensity_prob=0.5)
    for seed in range(6):
        transform.set_random_state(seed)
        data = {"image": torch.from_numpy(image), "label": label, "pseudo_label": pseudo}
        out = transform(data)
        out = out[0] if isinstance(out, list) else out
        assert out["label"].shape == (1, *SMALL)
        assert set(np.unique(np.asarray(out["label"])).tolist()) <= {0.0, 3.0}
        assert set(np.unique(np.asarray(out["pseudo_label"])).tolist()) <= {5.0, 9.0}


def test_crop_prob_and_resize_mode_give_the_zoom_outs_input() -> None:
    # crop_prob 0 with nearest-exact: every sample is the whole volume resized as the zoom-out
    # resizes a test volume; crop_prob 1: every sample is a crop at the stored resolution
    label = np.zeros((1, 20, 50, 40), dtype=np.int64)
    label[0, 4:16, 10:37, 8:30] = 1
    image = torch.rand((1, 20, 50, 40), generator=torch.Generator().manual_seed(2)) + 0.1
    zoom_out = torch.nn.functional.interpolate(image[None], size=SMALL, mode="nearest-exact")[0]
    area = torch.nn.functional.interpolate(image[None], size=SMALL, mode="area")[0]
    whole = training_transform(SMALL, False, 0.0, 0.0, crop_prob=0.0, resize_mode="nearest-exact")
    crops = training_transform(SMALL, False, 0.0, 0.0, crop_prob=1.0)
    segvol = training_transform(SMALL, False, 0.0, 0.0)
    kinds = set()
    for seed in range(8):
        for transform in (whole, crops, segvol):
            transform.set_random_state(seed)
        out = whole({"image": image, "label": label})
        assert torch.equal(torch.as_tensor(out["image"]), zoom_out)
        out = crops({"image": image, "label": label})
        out = out[0] if isinstance(out, list) else out
        assert "scale" not in out or torch.equal(out["scale"], torch.ones(3, dtype=torch.float64))
        windows = image.unfold(1, SMALL[0], 1).unfold(2, SMALL[1], 1).unfold(3, SMALL[2], 1)
        crop = torch.as_tensor(out["image"])[0]
        assert (windows[0] == crop).flatten(-3).all(-1).any()  # a window of the volume
        out = segvol({"image": image, "label": label})
        out = out[0] if isinstance(out, list) else out
        kinds.add("resize" if torch.allclose(torch.as_tensor(out["image"]), area) else "crop")
    assert kinds == {"resize", "crop"}  # SegVol's default: both, the resize by area
    with pytest.raises(ValueError, match="crop_prob"):
        training_transform(SMALL, False, 0.0, 0.0, crop_prob=1.5)


def test_spacing_without_metadata_matches_monai_affine() -> None:
    # the voxel size from ResizeScale equals the one MONAI's tracked affine gives, on both the
    # resize and the crop branch (seeds 0-7 take both)
    from monai.data import MetaTensor

    from segfm.data.m3d_datasets import untracked_meta

    label = np.zeros((1, 20, 50, 40), dtype=np.int64)
    label[0, 4:16, 10:37, 8:30] = 1
    image = np.random.default_rng(1).random((1, 20, 50, 40)).astype(np.float32) + 0.1
    image[:, :2] = 0  # a background margin for the foreground crop
    spacing = torch.tensor([2.5, 0.8, 0.7], dtype=torch.float64)
    affine = torch.diag(torch.cat([spacing, torch.ones(1, dtype=torch.float64)]))
    transform = training_transform(SMALL, pseudo=False, flip_prob=0.5, intensity_prob=0.0)
    scales = set()
    for seed in range(8):
        transform.set_random_state(seed)
        tracked = transform(
            {"image": MetaTensor(torch.from_numpy(image), affine=affine), "label": label}
        )
        transform.set_random_state(seed)
        with untracked_meta():
            plain = transform({"image": torch.from_numpy(image), "label": label})
        tracked = tracked[0] if isinstance(tracked, list) else tracked
        plain = plain[0] if isinstance(plain, list) else plain
        want = torch.linalg.norm(tracked["image"].affine[:3, :3], dim=0)
        got = spacing * plain.get("scale", 1.0)
        torch.testing.assert_close(got, want)
        assert torch.equal(torch.as_tensor(plain["image"]), tracked["image"].as_tensor())
        scales.add(tuple(got.tolist()))
    assert len(scales) >= 2  # both branches were taken


def test_test_samples_are_whole_volumes(root: Path) -> None:
    module = _module(root)
    module.setup("test")
    batches = list(module.test_dataloader())
    assert len(batches) == 2
    for batch in batches:
        meta = batch["meta"][0]
        code, name = meta["case_id"].split("/")
        assert batch["image"].shape == (1, 1, *SHAPE[::-1])
        expected = label_volume(BOXES[code][name]).transpose(2, 1, 0)
        assert np.array_equal(batch["label"][0, 0].numpy(), expected)
        assert batch["image"].min() == 0 and batch["image"].max() == 1
        assert meta["transpose"] == (2, 1, 0) and meta["original_shape"] == SHAPE
        spacing = SPACING[::-1] if code == "0000" else (1.0, 1.0, 1.0)
        assert batch["spacing"][0].tolist() == pytest.approx(spacing)


def test_validation_split(root: Path) -> None:
    module = _module(root, val_ratio=0.3, use_pseudo_masks=False)
    module.setup("fit")
    train = {c.case_id for c in module.datasets["train"].cases}
    val = {c.case_id for c in module.datasets["val"].cases}
    assert not train & val and len(val) == 2 and {v.split("/")[0] for v in val} == set(CODES)
    assert len(train | val) == 5


def test_shipped_config_builds_the_module(root: Path) -> None:
    config = Path(__file__).resolve().parents[2] / "configs" / "data" / "m3d_seg.yaml"
    content = yaml.safe_load(config.read_text())
    assert content["class_path"] == "segfm.data.M3DSegDataModule"
    module = M3DSegDataModule(**content["init_args"] | {"root": str(root), "num_workers": 0})
    assert module.spatial_size == (32, 256, 256) and module.dataset_codes == ["0000"]
    module.setup("test")
    assert len(module.datasets["test"]) == 1


def test_module_arguments_and_missing_code(root: Path) -> None:
    with pytest.raises(ValueError, match="val_ratio"):
        _module(root, val_ratio=1.0)
    with pytest.raises(ValueError, match="dataset_codes"):
        _module(root, dataset_codes=[])
    with pytest.raises(DataError, match="code '0002' is not built"):
        _module(root, dataset_codes=["0002"]).setup("fit")


def test_training_batches_come_from_one_dataset(root: Path) -> None:
    module = _module(root, use_pseudo_masks=False)
    module.setup("fit")
    seen = []
    for batch in module.train_dataloader():
        codes = {m["dataset"] for m in batch["meta"]}
        assert len(codes) == 1 and batch["image"].shape[0] == 2
        seen += [m["case_id"] for m in batch["meta"]]
    assert set(seen) == {c.case_id for c in module.datasets["train"].cases}


# --- sampler and loader ------------------------------------------------------------------------


GROUPS = [list(range(5)), list(range(5, 8)), list(range(8, 15))]


def _by_rank(replicas: int, epoch: int = 0) -> list[list[list[int]]]:
    out = []
    for rank in range(replicas):
        sampler = DatasetBatchSampler(
            range(15), GROUPS, 2, num_replicas=replicas, rank=rank, seed=4
        )
        sampler.set_epoch(epoch)
        flat = [index for index, _ in sampler]
        assert len(flat) == len(sampler)
        out.append([flat[i : i + 2] for i in range(0, len(flat), 2)])
    return out


@pytest.mark.parametrize("replicas", [1, 2, 3])
def test_sampler_splits_ranks(replicas: int) -> None:
    ranks = _by_rank(replicas)
    assert len({len(r) for r in ranks}) == 1  # as many batches on every rank
    batches = [b for r in ranks for b in r]
    for batch in batches:
        assert sum(set(batch) <= set(g) for g in GROUPS) == 1
    assert set().union(*map(set, batches)) == set(range(15))  # nothing dropped
    assert len(batches) == replicas * -(-9 // replicas)  # 3 + 2 + 4 batches, padded
    if replicas == 2:
        first = {tuple(b) for b in ranks[0]}
        assert not first & {tuple(b) for b in ranks[1][:-1]}  # only the padding repeats


def test_sampler_epochs_replay_and_differ() -> None:
    assert _by_rank(2, epoch=1) == _by_rank(2, epoch=1)
    assert _by_rank(2, epoch=1) != _by_rank(2, epoch=2)
    with pytest.raises(ValueError, match="batch_size"):
        DatasetBatchSampler(range(3), [[0, 1, 2]], 0)


class _Indices(Dataset):
    def __init__(self, codes: list[str]) -> None:
        self.codes = codes

    def __len__(self) -> int:
        return len(self.codes)

    def __getitem__(self, index: int) -> dict:
        return {"meta": {"index": index, "dataset": self.codes[index]}}


def test_loader_resumes_mid_epoch() -> None:
    dataset = _Indices(["a"] * 5 + ["b"] * 3 + ["c"] * 7)

    def make() -> ResumableDataLoader:
        sampler = DatasetBatchSampler(dataset, GROUPS, 2, seed=1)
        return ResumableDataLoader(dataset, order=sampler, batch_size=2, collate_fn=collate)

    full = make()
    full.sampler.set_epoch(2)
    expected = [[m["index"] for m in b["meta"]] for b in full]
    interrupted = make()
    interrupted.sampler.set_epoch(2)
    iterator = iter(interrupted)
    done = [[m["index"] for m in next(iterator)["meta"]] for _ in range(3)]
    state = interrupted.state_dict()
    assert state == {"epoch": 2, "seed": 1, "batches": 3}
    resumed = make()
    resumed.load_state_dict(state)
    rest = [[m["index"] for m in b["meta"]] for b in resumed]
    assert done + rest == expected


class _Recorder(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.codes: list[set[str]] = []

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        self.codes.append({m["dataset"] for m in batch["meta"]})
        return (self.weight - batch["image"].mean()) ** 2

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_lightning_fit_uses_single_dataset_batches(root: Path, tmp_path: Path) -> None:
    module = _module(root, spatial_size=(8, 16, 16), use_pseudo_masks=False)
    model = _Recorder()
    trainer = pl.Trainer(
        max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(model, datamodule=module)
    assert len(model.codes) == 2 * 3 and all(len(c) == 1 for c in model.codes)  # 2+1 batches


# --- verify ------------------------------------------------------------------------------------


def test_verify_reads_every_case_and_names_a_broken_one(root: Path, tmp_path: Path) -> None:
    report = _module(root).verify()
    assert report.errors == [] and report.checked == sum(
        len(read_dataset(root, code).train + read_dataset(root, code).test)
        for code in ("0000", "0001")
    ), report.text()
    copy = shutil.copytree(root, tmp_path / "m3d")
    case = read_dataset(copy, "0001").train[0]
    case.image.write_bytes(b"garbage")
    (copy / "0000" / "0000.json").write_text("{")
    report = _module(copy).verify()
    files = sorted(p.file for p in report.errors)
    assert files == sorted([str(case.image), str(copy / "0000" / "0000.json")]), report.text()
    assert all(p.fix for p in report.errors)
