"""SegVol checkpoints: both released layouts in, SegVol_v1.pth layout out, bit for bit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from segfm.checkpoints.formats import export_state_dict
from segfm.checkpoints.segvol import load_into, load_official, save_official
from segfm.errors import CheckpointError
from segfm.models.segvol import segvol_tiny

STALE = "text_encoder.clip_text_model.text_model.embeddings.position_ids"


def _reference() -> dict[str, torch.Tensor]:
    torch.manual_seed(3)
    model = segvol_tiny()
    with torch.no_grad():  # non-default values everywhere, incl. the frozen text tower
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


def _release_file(state: dict[str, torch.Tensor], path: Path) -> Path:
    """The SegVol_v1.pth layout as train.py writes it, with the transformers-4.18 buffer."""
    model = {"module." + k: v for k, v in state.items()}
    model["module." + STALE] = torch.arange(77)[None]
    optimizer = {"state": {0: {"exp_avg": torch.zeros(3)}}, "param_groups": [{"lr": 1e-4}]}
    torch.save({"model": model, "optimizer": optimizer, "epoch": 499, "scheduler": {}}, path)
    return path


def test_release_layout_loads_strict_and_exports_bit_for_bit(tmp_path: Path) -> None:
    ref = _reference()
    loaded = load_official(_release_file(ref, tmp_path / "SegVol_v1.pth"))
    assert STALE not in loaded
    _assert_same(loaded, ref)
    model = segvol_tiny()
    load_into(model, loaded)
    _assert_same(model.state_dict(), ref)

    out = save_official(model, tmp_path / "export.pth", epoch=7)
    raw = torch.load(out, weights_only=True, map_location="cpu")
    assert set(raw) == {"model", "epoch"} and raw["epoch"] == 7
    assert all(k.startswith("module.") for k in raw["model"])
    _assert_same({k.removeprefix("module."): v for k, v in raw["model"].items()}, ref)
    _assert_same(load_official(out), ref)


def test_hugging_face_layout_loads(tmp_path: Path) -> None:
    ref = _reference()
    path = tmp_path / "pytorch_model.bin"
    hf = {"model." + k: v for k, v in ref.items()}
    hf["model." + STALE] = torch.arange(77)[None]
    torch.save(hf, path)
    loaded = load_official(path)
    _assert_same(loaded, ref)
    # and back to the release layout, then again: a fixed point
    first = save_official(loaded, tmp_path / "a.pth")
    second = save_official(load_official(first), tmp_path / "b.pth")
    _assert_same(
        torch.load(first, weights_only=True)["model"],
        torch.load(second, weights_only=True)["model"],
    )


def test_lightning_state_dict_exports_through_the_format_registry(tmp_path: Path) -> None:
    ref = _reference()
    lightning = {"model." + k: v for k, v in ref.items()}
    out = export_state_dict(lightning, "segvol", tmp_path / "segvol.pth")
    _assert_same(load_official(out), ref)


def test_other_families_and_bad_files_are_refused(tmp_path: Path) -> None:
    sam = {"image_encoder.patch_embed.proj.weight": torch.zeros(4, 3, 16, 16)}
    torch.save(sam, tmp_path / "sam.pth")
    with pytest.raises(CheckpointError, match="not a SegVol network"):
        load_official(tmp_path / "sam.pth")
    (tmp_path / "broken.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"broken\.pth"):
        load_official(tmp_path / "broken.pth")
    with pytest.raises(ValueError, match="epoch"):
        save_official(_reference(), tmp_path / "x.pth", epoch=-1)


def test_mismatched_network_names_the_keys(tmp_path: Path) -> None:
    ref = _reference()
    del ref["mask_decoder.iou_token.weight"]
    with pytest.raises(CheckpointError, match="1 missing"):
        load_into(segvol_tiny(), ref)
