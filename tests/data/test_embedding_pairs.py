"""Two-view pairs: each voxel's position names the source point its intensity came from."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage

from segfm.data.datamodules.embedding_pairs import EmbeddingPairDataModule
from segfm.data.embedding_datasets import collate_pairs
from segfm.errors import DataError
from segfm.transforms.intensity import window_ct_mr
from tests.data.embedding.data import build

PATCH = (16, 32, 32)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tmp_path_factory.mktemp("embedding"))


def _source_at(path: Path, position_zyx: np.ndarray, kind: str = "none") -> np.ndarray:
    """Normalised source intensities at world points (Z, Y, X) RAS mm (nibabel, trilinear).

    Points outside the source grid give NaN.
    """
    image = nib.load(path)
    world = np.concatenate([position_zyx[::-1], np.ones((1, position_zyx.shape[1]))])
    index = (np.linalg.inv(image.affine) @ world)[:3]  # (i, j, k) of the file
    data = window_ct_mr(np.asarray(image.dataobj, np.float32), kind)  # type: ignore[arg-type]
    out = ndimage.map_coordinates(data.astype(np.float64), index, order=1)
    inside = np.all((index >= 0) & (index <= np.asarray(data.shape)[:, None] - 1), axis=0)
    return np.where(inside, out, np.nan)


def _module(root: Path, **kw: object) -> EmbeddingPairDataModule:
    args = {"patch_size": PATCH, "num_workers": 0, "batch_size": 2, "noise_std": 0.0}
    return EmbeddingPairDataModule(str(root), **(args | kw))  # type: ignore[arg-type]


def test_positions_name_the_source_voxels(root: Path) -> None:
    dm = _module(root, independent_prob=0.0, samples_per_epoch=3)
    dm.setup("fit")
    torch.manual_seed(0)
    for _ in range(3):
        s = dm.datasets["train"][0]
        source = root / f"{s['meta']['case_id']}.nii.gz"
        for v in (1, 2):
            valid = s[f"valid{v}"][0].numpy()
            pos = s[f"position{v}"].numpy().reshape(3, -1)[:, valid.ravel()]
            expected = _source_at(source, pos, "ct")
            got = s[f"view{v}"][0].numpy()[valid]
            np.testing.assert_allclose(got, expected, atol=0.05)
        # the shared seed: the views overlap, so some points of view 1 are in view 2
        p1 = s["position1"].flatten(1).T[s["valid1"].flatten()]
        p2 = s["position2"].flatten(1).T[s["valid2"].flatten()]
        assert torch.cdist(p1, p2).min() < 2.0


def test_ct_mr_views_share_the_world(root: Path) -> None:
    dm = _module(root, index_csv="pairs.csv", mode="ct_mr", rotation_deg=5.0, samples_per_epoch=2)
    dm.setup("fit")
    s = dm.datasets["val"][0]
    assert s["meta"]["case_id"].endswith("_ct") and s["meta"]["case_id2"].endswith("_mr")
    valid = s["valid2"][0].numpy()
    pos = s["position2"].numpy().reshape(3, -1)[:, valid.ravel()]
    patient = s["meta"]["case_id"].removesuffix("_ct").removeprefix("p")
    ct = _source_at(root / f"vol_{patient}.nii.gz", pos)
    mr = s["view2"][0].numpy()[valid]
    both = np.isfinite(ct)
    assert both.mean() > 0.5
    assert np.corrcoef(ct[both], mr[both])[0, 1] < -0.9  # the MR copy is 1000 - CT on its own grid


def test_collate_and_semantic_loader(root: Path) -> None:
    dm = _module(root, semantic_pairs=1, semantic_patch_size=(8, 16, 16), samples_per_epoch=2)
    dm.setup("fit")
    batch = collate_pairs([dm.datasets["val"][0], dm.datasets["val"][1]])
    assert batch["view1"].shape == (2, 1, *PATCH) and batch["position2"].shape == (2, 3, *PATCH)
    loaders = dm.train_dataloader()
    semantic = next(iter(loaders["semantic"]))
    assert semantic["label1"].shape == (1, 1, 8, 16, 16)
    assert semantic["meta"][0]["case_id"] != semantic["meta"][0]["case_id2"]
    assert next(iter(loaders["intra"]))["view1"].shape == (2, 1, *PATCH)


def test_validation_pairs_are_reproducible(root: Path) -> None:
    dm = _module(root)
    dm.setup("fit")
    a, b = dm.datasets["val"][1], dm.datasets["val"][1]
    assert torch.equal(a["view1"], b["view1"]) and torch.equal(a["position2"], b["position2"])


def test_predict_volumes_keep_the_grid(root: Path) -> None:
    dm = _module(root, spacing_mm=2.0)
    dm.setup("predict")
    s = dm.datasets["predict"][0]
    affine = nib.load(root / "vol_0.nii.gz").affine
    np.testing.assert_allclose(s["meta"]["affine"], affine[:, [2, 1, 0, 3]])
    assert s["image"].shape == (1, 24, 48, 48)


def test_bad_inputs(root: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="scale_range"):
        _module(root, scale_range=(1.2, 0.8))
    with pytest.raises(DataError, match="no index CSV"):
        _module(tmp_path).setup("fit")
    (tmp_path / "index.csv").write_text("file\nvol.nii.gz\n")
    with pytest.raises(DataError, match="name"):
        _module(tmp_path).setup("fit")
    (tmp_path / "index.csv").write_text("name\nmissing.nii.gz\n")
    with pytest.raises(DataError, match="does not exist"):
        _module(tmp_path).setup("fit")


def test_verify_reads_every_listed_volume(root: Path, tmp_path: Path) -> None:
    report = _module(root).verify()
    assert report.errors == [] and report.checked >= 2, report.text()
    copy = shutil.copytree(root, tmp_path / "emb")
    (copy / "vol_0.nii.gz").write_bytes(b"garbage")
    report = _module(copy, index_csv="pairs.csv", mode="ct_mr").verify()
    assert [p.file for p in report.errors] == [str(copy / "vol_0.nii.gz")], report.text()
    missing = _module(copy, index_csv="nowhere.csv").verify()
    assert [p.file for p in missing.errors] == [str(copy / "nowhere.csv")], missing.text()
