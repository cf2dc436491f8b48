"""BiomedParse checkpoints: the released Lightning layout loads strictly and exports bit for bit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from segfm.checkpoints.biomedparse import LOSS_BUFFERS, load_into, load_official, save_official
from segfm.errors import CheckpointError
from segfm.models.biomedparse import biomedparse_tiny


def _official_file(path: Path) -> dict[str, torch.Tensor]:
    """A file in the released layout: Lightning ckpt, ``model.`` keys, the two loss buffers."""
    torch.manual_seed(0)
    weights = {
        k: torch.randn_like(v.float()).to(v.dtype)
        for k, v in biomedparse_tiny(50).state_dict().items()
    }
    state = {f"model.{k}": v for k, v in weights.items()}
    state["model.loss_function.loss_fn.dice_loss.class_weight"] = torch.ones(1)
    state["model.loss_function.cls_loss_fn.pos_weight"] = torch.tensor(3.0)
    torch.save({"epoch": 3, "global_step": 10, "state_dict": state, "optimizer_states": []}, path)
    return weights


def test_load_strict_and_export_bit_for_bit(tmp_path: Path) -> None:
    weights = _official_file(tmp_path / "biomedparse_v2.ckpt")
    loaded = load_official(tmp_path / "biomedparse_v2.ckpt")
    assert not any(k in loaded for k in LOSS_BUFFERS)
    assert list(loaded) == list(weights)
    model = biomedparse_tiny(50)
    load_into(model, tmp_path / "biomedparse_v2.ckpt")
    for k, v in model.state_dict().items():
        assert torch.equal(v, weights[k]), k
    out = save_official(model, tmp_path / "export.ckpt")
    raw = torch.load(out, weights_only=True)
    assert set(raw) == {"state_dict"}
    assert list(raw["state_dict"]) == [f"model.{k}" for k in weights]
    again = load_official(out)
    for k, v in weights.items():
        assert again[k].dtype == v.dtype and torch.equal(again[k], v), k


def test_mismatch_and_foreign_files(tmp_path: Path) -> None:
    _official_file(tmp_path / "tiny.ckpt")
    with torch.device("meta"):
        from segfm.models.biomedparse import biomedparse_v2

        big = biomedparse_v2()
    with pytest.raises(CheckpointError, match="misshaped"):
        load_into(big, tmp_path / "tiny.ckpt")
    torch.save({"image_encoder.x": torch.zeros(1)}, tmp_path / "sam.pth")
    with pytest.raises(CheckpointError, match="not a BiomedParse"):
        load_official(tmp_path / "sam.pth")
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_official(tmp_path / "missing.ckpt")
