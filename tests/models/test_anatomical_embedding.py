"""The anatomical embedding network: strides, unit norm, official keys, export round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from segfm.checkpoints.anatomical_embedding import (
    load_embedding_model,
    load_into,
    load_official,
    save_official,
)
from segfm.errors import CheckpointError
from segfm.inference.embedding import embed_volume
from segfm.models.anatomical_embedding import sam_embedding, tiny_embedding

KEYS = Path(__file__).resolve().parents[1] / "data" / "embedding" / "official_keys.txt"


def _official() -> dict[str, tuple[int, ...]]:
    rows = [line.split("\t") for line in KEYS.read_text().splitlines() if not line.startswith("#")]
    return {k: tuple(int(v) for v in s.split(",") if v) for k, s in rows}


@pytest.mark.parametrize("semantic", [False, True])
def test_shapes_strides_and_unit_norm(semantic: bool) -> None:
    net = tiny_embedding(semantic=semantic).eval()
    out = net(torch.randn(2, 1, 16, 32, 48))
    assert out["fine"].shape == (2, 16, 8, 16, 24)
    assert out["coarse"].shape == (2, 16, 4, 2, 3)
    assert ("semantic" in out) == semantic
    for emb in out.values():
        assert torch.allclose(emb.norm(dim=1), torch.ones(()), atol=1e-5)


def test_embed_volume_pads_and_cuts() -> None:
    net = tiny_embedding(semantic=True)
    out = embed_volume(net, torch.randn(13, 35, 20))
    assert out["fine"].shape[1:] == (7, 18, 10)
    assert out["semantic"].shape[1:] == (7, 18, 10)
    assert out["coarse"].shape[1:] == (4, 3, 2)
    assert net.training  # restored


@pytest.mark.parametrize("stage", ["sam", "sam_pp", "cross_sam"])
def test_official_names_load_strict(stage: str) -> None:
    keys = _official()
    if stage == "sam":
        keys = {k: s for k, s in keys.items() if not k.startswith("semantic_head.")}
    state = {
        k: torch.zeros(s, dtype=torch.long if not s else torch.float32) for k, s in keys.items()
    }
    net = sam_embedding(stage)  # type: ignore[arg-type]
    assert set(net.state_dict()) == set(keys)
    net.load_state_dict(state, strict=True)
    mmcv = {"meta": {"iter": 20000}, "state_dict": state}
    load_into(sam_embedding(stage), mmcv)  # type: ignore[arg-type]


def test_wrong_arch_is_explained(tmp_path: Path) -> None:
    path = save_official(tiny_embedding(semantic=True), tmp_path / "pp.pth")
    with pytest.raises(CheckpointError, match="unexpected"):
        load_embedding_model(path, arch="tiny")
    with pytest.raises(CheckpointError, match="no SAM"):
        torch.save({"state_dict": {"foo.weight": torch.zeros(1)}}, tmp_path / "x.pth")
        load_official(tmp_path / "x.pth")


def test_export_round_trip_is_bit_exact(tmp_path: Path) -> None:
    net = tiny_embedding(semantic=True)
    for p in net.parameters():
        p.data.normal_()
    lightning = {"state_dict": {f"model.{k}": v for k, v in net.state_dict().items()}}
    first = save_official(lightning, tmp_path / "a.pth")
    raw = torch.load(first, weights_only=True)
    assert set(raw) == {"meta", "state_dict"}  # mmcv's layout
    loaded = load_official(first)
    second = load_official(save_official(loaded, tmp_path / "b.pth"))
    for k, v in net.state_dict().items():
        assert torch.equal(loaded[k], v) and torch.equal(second[k], v)
    again = load_embedding_model(first, arch="tiny_pp")
    x = torch.randn(1, 1, 8, 16, 16)
    assert torch.equal(again(x)["fine"], net.eval()(x)["fine"])


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="stage"):
        sam_embedding("samv3")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="shape"):
        embed_volume(tiny_embedding(), torch.zeros(1, 8, 16, 16))
