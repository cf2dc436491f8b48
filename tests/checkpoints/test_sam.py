"""SAM checkpoint files: unwrapping, exact round trips, official loading, bad files."""

from __future__ import annotations

import argparse
import errno
import os
from pathlib import Path

import pytest
import torch

from segfm.checkpoints.io import load_file, save_file
from segfm.checkpoints.sam import load_into, load_official, save_official, unwrap_state_dict
from segfm.errors import CheckpointError
from segfm.models import sam_tiny, sam_vit_b
from tests.official import official, randomize_


@pytest.fixture(scope="module")
def tiny_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return randomize_(sam_tiny(image_size=64), seed=1).state_dict()


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


def test_round_trip_is_bit_identical(tmp_path: Path, tiny_state) -> None:
    original = tmp_path / "sam.pth"
    torch.save(tiny_state, original)
    loaded = load_official(original)
    _assert_same(loaded, tiny_state)
    copy = save_official(loaded, tmp_path / "copy.pth")
    _assert_same(load_official(copy), loaded)
    model = sam_tiny(image_size=64)
    load_into(model, copy)
    _assert_same(load_official(save_official(model, tmp_path / "model.pth")), tiny_state)


def _wrap(kind: str, state: dict[str, torch.Tensor]) -> object:
    if kind == "medsam":
        return {
            "model": {f"module.{k}": v for k, v in state.items()},
            "optimizer": {"state": {}},
            "epoch": 3,
        }
    if kind == "sam_med3d":
        return {"model_state_dict": state, "epoch": 1, "args": argparse.Namespace(lr=8e-4)}
    if kind == "lightning":
        sd = {f"model.{k}": v for k, v in state.items()}
        sd["dice_loss.class_weight"] = torch.ones(1)  # another module of the LightningModule
        return {"state_dict": sd, "hyper_parameters": {"arch": "tiny"}, "epoch": 0}
    if kind == "stale":
        return {
            **state,
            "pixel_mean": torch.zeros(3, 1, 1),
            "image_encoder.position_ids": torch.arange(3),
        }
    return state


@pytest.mark.parametrize("kind", ["plain", "medsam", "sam_med3d", "lightning", "stale"])
def test_wrapped_files_load(tmp_path: Path, tiny_state, kind: str) -> None:
    path = tmp_path / f"{kind}.pth"
    torch.save(_wrap(kind, tiny_state), path)
    _assert_same(load_official(path), tiny_state)
    load_into(sam_tiny(image_size=64), path)


def test_unwrap_errors() -> None:
    with pytest.raises(CheckpointError, match="no SAM weights"):
        unwrap_state_dict({"encoder.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="several SAM networks"):
        unwrap_state_dict(
            {"a.image_encoder.x": torch.zeros(1), "b.image_encoder.x": torch.zeros(1)}
        )
    with pytest.raises(CheckpointError, match="no state dict found"):
        unwrap_state_dict({"epoch": 3})


def test_segment_anything_loads_the_exported_file(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = sam_vit_b()
    with torch.no_grad():
        model.image_encoder.blocks[3].attn.rel_pos_w.normal_()
    path = save_official(model, tmp_path / "medsam_vit_b.pth")
    ref = official().build_sam.sam_model_registry["vit_b"](checkpoint=str(path))
    got = ref.state_dict()
    assert len(got) == 314
    for name in (
        "image_encoder.blocks.3.attn.rel_pos_w",
        "mask_decoder.iou_prediction_head.layers.2.bias",
    ):
        assert torch.equal(got[name], model.state_dict()[name])


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"model": {"image_encoder.x": torch.zeros(1)}, "payload": _Payload(marker)}, path)
    for load in (load_file, load_official, lambda p: load_into(sam_tiny(image_size=64), p)):
        with pytest.raises(CheckpointError, match=r"evil\.pth: refused to load.*system") as info:
            load(path)
        assert "\n" not in str(info.value)
    assert not marker.exists()


def test_mismatched_keys_name_the_file(tmp_path: Path, tiny_state) -> None:
    state = dict(tiny_state)
    del state["mask_decoder.iou_token.weight"]
    state["mask_decoder.extra.weight"] = torch.zeros(2)
    state["image_encoder.pos_embed"] = torch.zeros(1, 4, 4, 96)
    path = tmp_path / "odd.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as info:
        load_into(sam_tiny(image_size=64), path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    assert "1 missing (mask_decoder.iou_token.weight)" in message
    assert "1 unexpected (mask_decoder.extra.weight)" in message
    assert (
        "1 misshaped (image_encoder.pos_embed: checkpoint [1, 4, 4, 96] vs network [1, 8, 8, 96])"
        in message
    )
    with pytest.raises(CheckpointError, match="state dict does not fit"):
        load_into(sam_tiny(image_size=64), state)


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage"])
def test_broken_files(tmp_path: Path, tiny_state, damage: str) -> None:
    path = tmp_path / "broken.pth"
    torch.save(tiny_state, path)
    data = path.read_bytes()
    path.write_bytes(
        {"truncated": data[: len(data) // 2], "empty": b"", "garbage": b"not a checkpoint"}[damage]
    )
    with pytest.raises(
        CheckpointError, match=r"broken\.pth: not a readable PyTorch checkpoint"
    ) as info:
        load_official(path)
    assert "\n" not in str(info.value)


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"nope\.pth: no such checkpoint file"):
        load_file(tmp_path / "nope.pth")
    with pytest.raises(CheckpointError, match="is a folder"):
        load_file(tmp_path)


def _disk_full(monkeypatch) -> None:
    def save(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", save)


def test_full_disk_leaves_no_partial_file(tmp_path: Path, tiny_state, monkeypatch) -> None:
    out = tmp_path / "out"
    existing = tmp_path / "existing.pth"
    save_file({"x": torch.ones(2)}, existing)
    before = existing.read_bytes()
    _disk_full(monkeypatch)
    with pytest.raises(
        CheckpointError, match=r"new\.pth: could not be written \(No space left on device\)"
    ):
        save_official(tiny_state, out / "new.pth")
    with pytest.raises(CheckpointError, match="could not be written"):
        save_file({"x": torch.zeros(2)}, existing)
    assert list(out.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing.pth", "out"]
    assert existing.read_bytes() == before


def test_save_file_creates_folders(tmp_path: Path) -> None:
    path = save_file({"x": torch.arange(3)}, tmp_path / "a" / "b" / "c.pt")
    assert torch.equal(load_file(path)["x"], torch.arange(3))
