"""SegVol network: official key/shape parity, prompt shapes, the PE quirk, text encoding."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from data_tools.tiny_clip import write_tiny_clip
from segfm.errors import ConfigError
from segfm.models.segvol import (
    SegVolPromptEncoder,
    build_segvol,
    segvol_base,
    segvol_tiny,
)
from tests.models.segvol_keys import official_shapes


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_clip(tmp_path_factory.mktemp("clip") / "clip")


def test_base_has_the_official_keys_and_shapes_and_loads_them_strict() -> None:
    with torch.device("meta"):
        model = segvol_base()
        expected = official_shapes()
        state = {k: torch.empty(shape) for k, shape in expected.items()}
    ours = model.state_dict()
    assert set(ours) == set(expected)
    assert {k: tuple(v.shape) for k, v in ours.items()} == expected
    model.load_state_dict(state, strict=True, assign=True)
    params = sum(p.numel() for p in model.parameters())
    buffers = sum(b.numel() for b in model.buffers() if b.dtype.is_floating_point)
    assert params + buffers == 180_891_216


def test_base_text_tower_is_clip_vit_b32_and_frozen() -> None:
    with torch.device("meta"):
        model = segvol_base()
    config = model.text_encoder.config
    assert (config.hidden_size, config.num_hidden_layers, config.vocab_size) == (512, 12, 49408)
    assert not any(p.requires_grad for p in model.text_encoder.parameters())
    assert all(p.requires_grad for p in model.image_encoder.parameters())


@pytest.mark.parametrize(
    "combo", ["text", "box", "point", "text+box", "text+point", "box+point", "all"]
)
def test_tiny_decodes_every_prompt_combination(clip_dir: Path, combo: str) -> None:
    torch.manual_seed(0)
    model = segvol_tiny(clip_dir=clip_dir).eval()
    image = torch.randn(2, 1, *model.roi_size)
    embeddings = model.encode(image)
    assert embeddings.shape == (2, 48, 4, 4, 4)
    n = 3  # three prompt sets on the two embeddings
    rows = embeddings[torch.tensor([0, 1, 1])]
    text = (
        model.embed_text(["liver", "kidney", "spleen"])
        if "text" in combo or combo == "all"
        else None
    )
    points = None
    if "point" in combo or combo == "all":
        coords = torch.randint(0, 16, (n, 4, 3)).float()
        points = (coords, torch.tensor([[1, 1, 0, -1]] * n))
    boxes = (
        torch.tensor([[2, 4, 4, 10, 20, 24]] * n).float()
        if "box" in combo or combo == "all"
        else None
    )
    low = model.decode(rows, text, points, boxes)
    assert low.shape == (n, 1, 16, 16, 16)
    assert torch.isfinite(low).all()
    assert model.postprocess(low, model.roi_size).shape == (n, 1, *model.roi_size)
    # rows are independent: decoding one row alone gives the same logits
    one = model.decode(
        rows[1:2],
        None if text is None else text[1:2],
        None if points is None else (points[0][1:2], points[1][1:2]),
        None if boxes is None else boxes[1:2],
    )
    torch.testing.assert_close(one, low[1:2], atol=1e-5, rtol=1e-4)


def test_text_changes_the_mask_through_token_and_similarity(clip_dir: Path) -> None:
    torch.manual_seed(0)
    model = segvol_tiny(clip_dir=clip_dir).eval()
    rows = model.encode(torch.randn(1, 1, *model.roi_size)).expand(2, -1, -1, -1, -1)
    text = model.embed_text(["liver", "kidney"])
    assert not torch.allclose(text[0], text[1])
    low = model.decode(rows, text)
    assert not torch.allclose(low[0], low[1])


def test_decode_without_prompt_and_wrong_sizes_are_refused() -> None:
    model = segvol_tiny()
    emb = model.encode(torch.zeros(1, 1, *model.roi_size))
    with pytest.raises(ValueError, match="at least one prompt"):
        model.decode(emb)
    with pytest.raises(ValueError, match="takes volumes of"):
        model.encode(torch.zeros(1, 1, 8, 32, 32))
    with pytest.raises(ValueError, match="fixed shape"):
        model.mask_decoder(
            torch.zeros(1, 48, 2, 4, 4),
            torch.zeros(1, 48, 2, 4, 4),
            torch.zeros(1, 2, 48),
            torch.zeros(1, 48, 2, 4, 4),
        )
    with pytest.raises(ValueError, match="unknown SegVol architecture"):
        build_segvol("huge")


def test_text_without_clip_dir_says_what_to_set() -> None:
    model = segvol_tiny()
    with pytest.raises(ConfigError, match="clip_dir"):
        model.embed_text(["liver"])


def _unit_gaussian(encoder: SegVolPromptEncoder) -> None:
    """G with G[c, c] = 1 for c < 3, zeros elsewhere: feature c is sin(2 pi (2 p_c - 1))."""
    g = torch.zeros_like(encoder.pe_layer.positional_encoding_gaussian_matrix)
    g[0, 0] = g[1, 1] = g[2, 2] = 1.0
    encoder.pe_layer.positional_encoding_gaussian_matrix.copy_(g)


def test_point_encoding_reproduces_the_axis_quirk() -> None:
    # input (D, H, W) = (8, 32, 64): three different sizes, so each divisor is visible
    encoder = SegVolPromptEncoder(48, (2, 4, 8), (8, 32, 64))
    _unit_gaussian(encoder)
    half = 24
    d, h, w = 5, 20, 33
    coords = torch.tensor([[[d, h, w]]], dtype=torch.float32)
    with torch.no_grad():
        sparse, _ = encoder(points=(coords, torch.tensor([[1]])), boxes=None)
    token = sparse[0, 0] - encoder.point_embeddings[1].weight[0]
    # SegVol divides coordinate 0 (the d index) by H = 32 and coordinate 1 (h) by D = 8
    expected = [(d + 0.5) / 32, (h + 0.5) / 8, (w + 0.5) / 64]
    for c, p in enumerate(expected):
        angle = 2 * math.pi * (2 * p - 1)
        assert token[c].item() == pytest.approx(math.sin(angle), abs=1e-5)
        assert token[half + c].item() == pytest.approx(math.cos(angle), abs=1e-5)
    # the padding point added without a box is the learned "not a point" token
    assert torch.equal(sparse[0, 1], encoder.not_a_point_embed.weight[0])


def test_dense_encoding_runs_coordinate_0_along_h_and_1_along_d() -> None:
    encoder = SegVolPromptEncoder(48, (2, 4, 8), (8, 32, 64))
    _unit_gaussian(encoder)
    with torch.no_grad():
        pe = encoder.get_dense_pe()[0]  # [48, 2, 4, 8]
    assert pe.shape == (48, 2, 4, 8)
    i, j, k = 1, 2, 5
    expected = [(j + 0.5) / 4, (i + 0.5) / 2, (k + 0.5) / 8]
    for c, p in enumerate(expected):
        assert pe[c, i, j, k].item() == pytest.approx(math.sin(2 * math.pi * (2 * p - 1)), abs=1e-5)


def test_box_corners_and_text_token_order() -> None:
    encoder = SegVolPromptEncoder(48, (2, 4, 8), (8, 32, 64))
    text = torch.randn(2, 48)
    boxes = torch.tensor([[1.0, 2, 3, 4, 5, 6], [0, 0, 0, 7, 31, 63]])
    with torch.no_grad():
        sparse, dense = encoder(points=None, boxes=boxes, text_embedding=text)
        corners = encoder.pe_layer.forward_with_coords(
            (boxes + 0.5).reshape(2, 2, 3), encoder.input_image_size
        )
    assert sparse.shape == (2, 3, 48) and dense.shape == (2, 48, 2, 4, 8)
    torch.testing.assert_close(sparse[:, 0], corners[:, 0] + encoder.point_embeddings[2].weight)
    torch.testing.assert_close(sparse[:, 1], corners[:, 1] + encoder.point_embeddings[3].weight)
    torch.testing.assert_close(sparse[:, 2], text)


def test_image_encoder_sdpa_equals_monai_attention() -> None:
    # the encoder runs attention through SDPA; MONAI's own einsum path is the reference
    from monai.networks.nets import ViT

    from segfm.models.segvol.image_encoder import SegVolViT

    torch.manual_seed(0)
    ours = SegVolViT((8, 32, 32), (4, 8, 8), hidden_size=48, mlp_dim=96, num_layers=2, num_heads=4)
    monai_vit = ViT(1, (8, 32, 32), (4, 8, 8), 48, 96, 2, 4, proj_type="perceptron", qkv_bias=False)
    missing, unexpected = monai_vit.load_state_dict(ours.state_dict(), strict=False)
    assert not unexpected and all("norm_cross_attn" in k for k in missing)
    assert all(block.attn.use_flash_attention for block in ours.blocks)
    assert not any(block.attn.use_flash_attention for block in monai_vit.blocks)
    x = torch.randn(2, 1, 8, 32, 32)
    tokens, _ = monai_vit.eval()(x)
    want = tokens.transpose(1, 2).reshape(2, 48, 2, 4, 4)
    torch.testing.assert_close(ours.eval()(x), want, atol=1e-5, rtol=1e-5)
