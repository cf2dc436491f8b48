"""SAM-Med3D checkpoint files: the released layout in, the official layout out, medim loads it."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest
import torch

from segfm.checkpoints.formats import FORMATS, export_state_dict
from segfm.checkpoints.sam_med3d import load_into, load_official, save_official
from segfm.errors import CheckpointError
from segfm.models import sam_med3d, sam_tiny
from tests.official import randomize_

medim = pytest.importorskip("medim")


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    """Same keys in the same order, same dtypes and shapes, every tensor bit for bit."""
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def medim_state() -> dict[str, torch.Tensor]:
    """medim's SAM-Med3D state dict, every entry randomised (zero-initialised tables included)."""
    torch.manual_seed(0)
    model = medim.create_model("SAM-Med3D", pretrained=False)
    return randomize_(model, seed=21, scale=0.02).state_dict()


@pytest.fixture(scope="module")
def tiny3d_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return randomize_(sam_tiny(image_size=32, spatial_dims=3), seed=22).state_dict()


def _released_payload(state: dict[str, torch.Tensor]) -> dict[str, object]:
    """What SAM-Med3D's ``train.py`` saves (the layout of ``sam_med3d_turbo.pth``)."""
    param = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.AdamW([param], lr=8e-4, betas=(0.9, 0.999), weight_decay=0.1)
    param.sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, [120, 180], 0.1)  # a Counter
    args = argparse.Namespace(
        task_name="union_train",
        click_type="random",
        multi_click=False,
        model_type="vit_b_ori",
        checkpoint="ckpt/sam_med3d.pth",
        device="cuda",
        gpu_ids=[0, 1],
        step_size=[120, 180],
        gamma=0.1,
        img_size=128,
        lr=8e-4,
    )
    return {
        "epoch": 200,
        "model_state_dict": state,
        "optimizer_state_dict": optimizer.state_dict(),
        "lr_scheduler_state_dict": scheduler.state_dict(),
        "losses": [0.9, 0.7],
        "dices": [0.5, 0.6],
        "best_loss": 0.7,
        "best_dice": 0.6,
        "args": args,
        "used_datas": ["data/train/adrenal/ct_WORD"],
    }


def test_released_file_loads_strictly_and_exports_bit_identical(tmp_path: Path, medim_state):
    released = tmp_path / "sam_med3d_turbo.pth"
    torch.save(_released_payload(medim_state), released)
    loaded = load_official(released)
    assert len(loaded) == 324
    _assert_same(loaded, medim_state)
    model = sam_med3d()
    load_into(model, released)
    _assert_same(model.state_dict(), medim_state)
    # exporting the unchanged import gives back the original tensors
    out = save_official(loaded, tmp_path / "export.pth", epoch=200)
    raw = torch.load(out, map_location="cpu", weights_only=True)  # no Namespace: plain load
    assert set(raw) == {"epoch", "model_state_dict"} and raw["epoch"] == 200
    _assert_same(raw["model_state_dict"], medim_state)


def test_official_code_loads_the_export(tmp_path: Path, medim_state):
    model = sam_med3d()
    model.load_state_dict(medim_state, strict=True)
    with torch.no_grad():  # weights no medim initialisation could give
        model.image_encoder.blocks[4].attn.rel_pos_d.add_(1.0)
        model.mask_decoder.iou_prediction_head.layers[2].bias.mul_(-3.0)
    expected = model.state_dict()
    path = save_official(model, tmp_path / "segfm_sam_med3d.pth", epoch=7)
    # train.py: torch.load(...)["model_state_dict"] then a strict load_state_dict
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    assert ckpt["epoch"] == 7
    official = medim.create_model("SAM-Med3D", pretrained=False)
    official.load_state_dict(ckpt["model_state_dict"])
    _assert_same(official.state_dict(), expected)
    # medim's loader (strict=False: hence the key-by-key comparison)
    loaded = medim.create_model("SAM-Med3D", pretrained=True, checkpoint_path=str(path))
    got = loaded.state_dict()
    assert set(got) == set(expected)
    _assert_same({k: got[k] for k in expected}, expected)


def test_lightning_state_dict_exports_by_format_name(tmp_path: Path, tiny3d_state):
    assert "sam_med3d" in FORMATS
    lightning = {f"model.{k}": v for k, v in tiny3d_state.items()}
    lightning["loss.dice.weight"] = torch.ones(1)  # another module of the LightningModule
    path = export_state_dict(lightning, "sam_med3d", tmp_path / "tiny3d.pth")
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert set(raw) == {"epoch", "model_state_dict"} and raw["epoch"] == 0
    _assert_same(raw["model_state_dict"], tiny3d_state)
    model = sam_tiny(image_size=32, spatial_dims=3)
    load_into(model, path)
    _assert_same(model.state_dict(), tiny3d_state)


class _Hook:
    """A class outside the allow-list; unpickling it would call ``os.system``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


class _Options:
    """A harmless custom class: still refused, only argparse.Namespace is allowed."""

    def __init__(self) -> None:
        self.lr = 8e-4


REFUSED = {  # what is added to a released-layout file -> the global named in the error
    "hook": r"\.system",
    "custom_class": r"test_sam_med3d\._Options",
    "function": r"\.getcwd",
    "nested_in_args": r"\.system",
}


@pytest.mark.parametrize("extra", list(REFUSED))
def test_other_pickled_objects_are_refused(tmp_path: Path, tiny3d_state, extra: str):
    marker = tmp_path / "ran"
    payload = _released_payload(tiny3d_state)
    if extra == "hook":
        payload["hook"] = _Hook(marker)
    elif extra == "custom_class":
        payload["options"] = _Options()
    elif extra == "function":
        payload["collate"] = os.getcwd
    else:
        payload["args"] = argparse.Namespace(lr=8e-4, hook=_Hook(marker))
    path = tmp_path / f"{extra}.pth"
    torch.save(payload, path)
    for load in (load_official, lambda p: load_into(sam_tiny(image_size=32, spatial_dims=3), p)):
        pattern = rf"{extra}\.pth: refused to load.*\([\w.]*{REFUSED[extra]}\)"
        with pytest.raises(CheckpointError, match=pattern) as info:
            load(path)
        assert "\n" not in str(info.value)
    assert not marker.exists()


def test_namespace_args_alone_are_allowed(tmp_path: Path, tiny3d_state):
    path = tmp_path / "with_args.pth"
    torch.save(_released_payload(tiny3d_state), path)
    _assert_same(load_official(path), tiny3d_state)


def test_2d_sam_is_not_sam_med3d(tmp_path: Path):
    model = sam_tiny(image_size=32)
    path = tmp_path / "medsam.pth"
    torch.save(model.state_dict(), path)
    with pytest.raises(
        CheckpointError, match=r"medsam\.pth: not a SAM-Med3D network.*--format sam"
    ):
        load_official(path)
    with pytest.raises(CheckpointError, match="not a SAM-Med3D network"):
        save_official(model, tmp_path / "out.pth")
    assert not (tmp_path / "out.pth").exists()


def test_bad_arguments_and_files(tmp_path: Path, tiny3d_state):
    with pytest.raises(ValueError, match="epoch"):
        save_official(tiny3d_state, tmp_path / "x.pth", epoch=-1)
    with pytest.raises(CheckpointError, match=r"missing\.pth: no such checkpoint file"):
        load_official(tmp_path / "missing.pth")
    torch.save({"epoch": 3, "args": argparse.Namespace(lr=1.0)}, tmp_path / "no_weights.pth")
    with pytest.raises(CheckpointError, match=r"no_weights\.pth: no state dict found"):
        load_official(tmp_path / "no_weights.pth")
