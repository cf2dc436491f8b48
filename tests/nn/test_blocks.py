"""Building blocks: channels-first LayerNorm, MLPs, windows, relative-position attention."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from segfm.nn import (
    MLP,
    LayerNorm2d,
    LayerNormNd,
    MLPBlock,
    conv_transpose_type,
    conv_type,
    decomposed_rel_pos_bias,
    rel_pos,
    rel_pos_attention,
    window_partition,
    window_unpartition,
)
from tests.official import official


@pytest.mark.parametrize("shape", [(2, 8, 5, 6), (2, 8, 3, 4, 5)])
def test_layer_norm_matches_sam(shape) -> None:
    ref = official().common.LayerNorm2d(8)
    ours = LayerNormNd(8)
    with torch.no_grad():
        for p in (ref.weight, ref.bias):
            p.normal_()
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(shape)
    # SAM's formula, written for any number of trailing axes
    u = x.mean(1, keepdim=True)
    s = (x - u).pow(2).mean(1, keepdim=True)
    expand = (slice(None),) + (None,) * (len(shape) - 2)
    expected = ref.weight[expand] * (x - u) / torch.sqrt(s + 1e-6) + ref.bias[expand]
    torch.testing.assert_close(ours(x), expected, atol=1e-5, rtol=1e-5)
    if len(shape) == 4:
        torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=1e-5)
    assert list(LayerNorm2d(4).state_dict()) == ["weight", "bias"]


def test_mlps_have_official_names() -> None:
    assert list(MLPBlock(8, 16).state_dict()) == [
        "lin1.weight",
        "lin1.bias",
        "lin2.weight",
        "lin2.bias",
    ]
    mlp = MLP(8, 16, 4, 3, sigmoid_output=True)
    assert [k for k in mlp.state_dict() if k.endswith("weight")] == [
        f"layers.{i}.weight" for i in range(3)
    ]
    out = mlp(torch.randn(5, 8))
    assert out.shape == (5, 4) and (out > 0).all() and (out < 1).all()
    with pytest.raises(ValueError, match="num_layers"):
        MLP(8, 16, 4, 0)


def test_factories() -> None:
    assert conv_type(2) is nn.Conv2d and conv_type(3) is nn.Conv3d
    assert conv_transpose_type(3) is nn.ConvTranspose3d
    with pytest.raises(ValueError, match="spatial_dims must be one of"):
        conv_type(1)


@pytest.mark.parametrize(
    ("size", "window"), [((5, 7), 3), ((8, 8), 4), ((4, 4, 4), 3), ((2, 3, 5), 14)]
)
def test_window_partition_round_trip(size, window) -> None:
    x = torch.randn(2, *size, 6)
    windows, padded = window_partition(x, window)
    assert windows.shape[1:] == (*(window,) * len(size), 6)
    assert all(p % window == 0 and p >= s for p, s in zip(padded, size, strict=True))
    torch.testing.assert_close(window_unpartition(windows, window, padded, size), x)


def test_rel_pos_attention_matches_explicit_softmax() -> None:
    torch.manual_seed(0)
    size, heads, c = (3, 4, 2), 2, 8
    n = 24
    q, k, v = (torch.randn(1, heads, n, c) for _ in range(3))
    tables = [torch.randn(2 * s - 1, c) for s in size]
    out = rel_pos_attention(q, k, v, tables, size)  # SDPA with a float mask
    with_grad = rel_pos_attention(q.requires_grad_(), k, v, tables, size)  # explicit on CPU
    torch.testing.assert_close(with_grad.detach(), out, atol=1e-5, rtol=1e-5)
    # explicit: bias[q, k] = sum_a <q, R_a[q_a - k_a]>
    coords = torch.stack(
        torch.meshgrid(*(torch.arange(s) for s in size), indexing="ij"), -1
    ).reshape(n, 3)
    bias = torch.zeros(heads, n, n)
    for a in range(3):
        rel = coords[:, None, a] - coords[None, :, a] + size[a] - 1  # [n, n]
        bias += torch.einsum("hqc,qkc->hqk", q[0], tables[a][rel])
    logits = q[0] @ k[0].transpose(-1, -2) / c**0.5 + bias
    expected = logits.softmax(-1) @ v[0]
    torch.testing.assert_close(out[0], expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="cubic 3D grid"):
        decomposed_rel_pos_bias(q[0], tables, size, style="sam_med3d")
    with pytest.raises(ValueError, match="rows, expected"):
        decomposed_rel_pos_bias(q[0], tables[::-1], size)


@pytest.mark.parametrize("style", ["decomposed", "sam_med3d"])
def test_rel_pos_attention_in_chunks_equals_whole(monkeypatch, style) -> None:
    torch.manual_seed(1)
    size, heads, c = (4, 4, 4), 3, 8
    n = 64
    q, k, v = (torch.randn(2, heads, n, c) for _ in range(3))
    tables = [torch.randn(2 * s - 1, c) for s in size]
    whole = rel_pos_attention(q, k, v, tables, size, style)
    # 5 (image, head) pairs per chunk: chunks cross image boundaries and the last one is short
    monkeypatch.setattr(rel_pos, "MASK_CHUNK_ELEMENTS", 5 * n * n)
    built = []
    bias = rel_pos.decomposed_rel_pos_bias
    monkeypatch.setattr(
        rel_pos, "decomposed_rel_pos_bias", lambda q, *a: built.append(len(q)) or bias(q, *a)
    )
    chunked = rel_pos_attention(q, k, v, tables, size, style)
    assert built == [5, 1]
    torch.testing.assert_close(chunked, whole, atol=1e-6, rtol=1e-6)
