"""The official-forward reference of the anatomical embedding network against segfm's network."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from benchmarks.reference.anatomical_embedding import build_sam
from segfm.checkpoints.anatomical_embedding import load_official, save_official
from segfm.models.anatomical_embedding import tiny_embedding

KEYS = Path(__file__).resolve().parents[1] / "data" / "embedding" / "official_keys.txt"
HEADS = ("fine", "coarse", "semantic")


def _randomised(semantic: bool) -> torch.nn.Module:
    """A tiny segfm network whose every parameter and BN statistic is random (not 0 / 1)."""
    torch.manual_seed(0)
    net = tiny_embedding(semantic=semantic)
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            if name.endswith("running_var"):
                t.uniform_(0.5, 2.0)
            else:
                t.normal_(0.0, 0.3 if t.ndim > 1 else 0.5)
    return net


def _reference_from_export(net: torch.nn.Module, tmp_path: Path, semantic: bool):
    path = save_official(net, tmp_path / "official.pth")
    ref = build_sam(semantic=semantic, base_channels=4, out_channels=16, half_outputs=False)
    ref.load_state_dict(load_official(path), strict=True)
    return ref


@pytest.mark.parametrize("semantic", [False, True])
@pytest.mark.parametrize("training", [False, True])
def test_exported_weights_give_the_same_embeddings(
    tmp_path: Path, semantic: bool, training: bool
) -> None:
    net = _randomised(semantic)
    ref = _reference_from_export(net, tmp_path, semantic)
    net.train(training)
    ref.train(training)
    x = torch.randn(2, 1, 16, 32, 48, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, theirs = net(x), ref(x)
    assert list(ours) == list(HEADS[: len(theirs)])
    for key, emb in zip(ours, theirs, strict=True):
        assert ours[key].dtype == emb.dtype == torch.float32
        assert ours[key].shape == emb.shape
        torch.testing.assert_close(ours[key], emb, atol=1e-5, rtol=0, msg=key)
    # the original casts its outputs to float16 unless told otherwise
    ref.half_outputs = True
    with torch.no_grad():
        assert all(e.dtype == torch.float16 for e in ref(x))


def test_a_wrong_key_fails_the_strict_load(tmp_path: Path) -> None:
    state = load_official(save_official(_randomised(False), tmp_path / "official.pth"))
    ref = build_sam(semantic=False, base_channels=4, out_channels=16)
    state["neck.fpn_convs.0.weight"] = state.pop("neck.fpn_convs.0.conv.weight")
    with pytest.raises(RuntimeError, match=r"fpn_convs\.0\.conv\.weight"):
        ref.load_state_dict(state, strict=True)
    # a SAM++ file (with semantic_head.*) does not fit the SAM network either
    pp = load_official(save_official(_randomised(True), tmp_path / "pp.pth"))
    with pytest.raises(RuntimeError, match="semantic_head"):
        ref.load_state_dict(pp, strict=True)


def test_released_width_has_the_official_keys_and_shapes() -> None:
    rows = [ln.split("\t") for ln in KEYS.read_text().splitlines() if not ln.startswith("#")]
    official = {k: tuple(int(v) for v in s.split(",") if v) for k, s in rows}
    ref = build_sam(semantic=True).state_dict()
    assert {k: tuple(v.shape) for k, v in ref.items()} == official
