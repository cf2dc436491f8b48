"""segfm's SAM against segment-anything (2D) and SAM-Med3D via medim (3D): keys, shapes, outputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from segfm.models import SAM_REGISTRY, build_sam, sam_med3d, sam_vit_b
from segfm.models.build_sam import _build_sam
from tests.official import official, official_sam, randomize_

SIZE = 256  # vit_b at 256 px: a 16x16 grid, so the 14-px windows are padded to 28


@pytest.fixture(scope="module")
def vit_b_pair() -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    ref = randomize_(official_sam(image_size=SIZE), seed=1)
    ours = sam_vit_b(image_size=SIZE).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


def test_vit_b_has_the_official_keys_and_shapes() -> None:
    ref = official().build_sam.sam_model_registry["vit_b"]().state_dict()
    ours = sam_vit_b().state_dict()
    assert len(ours) == 314
    assert list(ours) == list(ref)
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in ref.items()}
    ours_model = sam_vit_b()
    ours_model.load_state_dict(ref, strict=True)
    assert torch.equal(
        ours_model.state_dict()["image_encoder.blocks.2.attn.rel_pos_h"],
        ref["image_encoder.blocks.2.attn.rel_pos_h"],
    )


def _official_run(ref, image, points=None, boxes=None, masks=None, multimask=False):
    record = {"image": image, "original_size": tuple(image.shape[-2:])}
    if points is not None:
        record["point_coords"], record["point_labels"] = points
    if boxes is not None:
        record["boxes"] = boxes
    if masks is not None:
        record["mask_inputs"] = masks
    out = ref([record], multimask_output=multimask)[0]
    return out["low_res_logits"], out["iou_predictions"]


PROMPTS = {
    "box": dict(boxes=torch.tensor([[30.0, 40.0, 200.0, 180.0]])),
    "points": dict(points=(torch.tensor([[[100.0, 120.0], [50.0, 60.0]]]), torch.tensor([[1, 0]]))),
    "all": dict(
        points=(torch.tensor([[[100.0, 120.0]]]), torch.tensor([[1]])),
        boxes=torch.tensor([[10.0, 20.0, 150.0, 250.0]]),
        masks=torch.randn(1, 1, SIZE // 4, SIZE // 4, generator=torch.Generator().manual_seed(3)),
    ),
}


@pytest.mark.parametrize("multimask", [False, True])
@pytest.mark.parametrize("prompt", list(PROMPTS))
def test_same_outputs_as_segment_anything(vit_b_pair, prompt: str, multimask: bool) -> None:
    ref, ours = vit_b_pair
    image = torch.rand(3, SIZE, SIZE, generator=torch.Generator().manual_seed(2)) * 255
    kwargs = PROMPTS[prompt]
    logits_ref, iou_ref = _official_run(ref, image, multimask=multimask, **kwargs)
    with torch.no_grad():
        logits, iou = ours(ours.preprocess(image[None]), multimask_output=multimask, **kwargs)
    assert logits.shape == logits_ref.shape == (1, 3 if multimask else 1, SIZE // 4, SIZE // 4)
    torch.testing.assert_close(logits, logits_ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(iou, iou_ref, atol=1e-5, rtol=0)


def test_batch_of_images_matches_segment_anything_image_by_image(vit_b_pair) -> None:
    ref, ours = vit_b_pair
    images = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(4)) * 255
    boxes = torch.tensor([[30.0, 40.0, 200.0, 180.0], [0.0, 0.0, 120.0, 90.0]])
    with torch.no_grad():
        logits, iou = ours(ours.preprocess(images), boxes=boxes)
    for i in range(2):
        logits_ref, iou_ref = _official_run(ref, images[i], boxes=boxes[i : i + 1])
        torch.testing.assert_close(logits[i : i + 1], logits_ref, atol=1e-5, rtol=0)
        torch.testing.assert_close(iou[i : i + 1], iou_ref, atol=1e-5, rtol=0)


def test_gradients_match_segment_anything(vit_b_pair) -> None:
    ref, ours = vit_b_pair
    image = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(5))
    box = torch.tensor([[30.0, 40.0, 200.0, 180.0]])
    ref.zero_grad()
    ours.zero_grad()
    emb = ref.image_encoder(image)
    sparse, dense = ref.prompt_encoder(points=None, boxes=box, masks=None)
    logits_ref, _ = ref.mask_decoder(emb, ref.prompt_encoder.get_dense_pe(), sparse, dense, False)
    logits_ref.square().mean().backward()
    logits, _ = ours(image, boxes=box)
    logits.square().mean().backward()
    for name in (
        "image_encoder.blocks.0.attn.rel_pos_h",
        "image_encoder.blocks.2.attn.rel_pos_w",
        "image_encoder.blocks.5.attn.qkv.weight",
        "image_encoder.pos_embed",
        "mask_decoder.transformer.layers.0.cross_attn_token_to_image.q_proj.weight",
    ):
        g_ref = ref.get_parameter(name).grad
        g = ours.get_parameter(name).grad
        torch.testing.assert_close(g, g_ref, atol=1e-6, rtol=1e-4, msg=name)


def test_relative_positions_matter(vit_b_pair) -> None:
    """Guard against a vacuous parity test: the rel-pos tables change the output."""
    _, ours = vit_b_pair
    image = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(6))
    box = PROMPTS["box"]["boxes"]
    blocks = ours.image_encoder.blocks
    with torch.no_grad():
        logits, _ = ours(image, boxes=box)
        saved = [b.attn.rel_pos_h.clone() for b in blocks]
        for b in blocks:
            b.attn.rel_pos_h.copy_(b.attn.rel_pos_h.flip(0))
        flipped, _ = ours(image, boxes=box)
        for b, s in zip(blocks, saved, strict=True):
            b.attn.rel_pos_h.copy_(s)
    assert (logits - flipped).abs().max() > 1e-3


# ---------------------------------------------------------------------------- 3D
SAM_MED3D = dict(
    spatial_dims=3,
    patch_size=16,
    in_chans=1,
    encoder_embed_dim=768,
    encoder_depth=12,
    encoder_num_heads=12,
    encoder_global_attn_indexes=(2, 5, 8, 11),
    window_size=14,
    rel_pos_style="sam_med3d",
    prompt_embed_dim=384,
    num_point_embeddings=2,
    pixel_mean=(123.675, 116.28, 103.53),
    pixel_std=(58.395, 57.12, 57.375),
)


def test_sam_med3d_keys_and_shapes() -> None:
    medim = pytest.importorskip("medim.models.sam_med3d")
    ref = medim.build_sam3D_vit_b_ori().state_dict()
    ours = _build_sam(image_size=128, **SAM_MED3D).state_dict()
    assert len(ours) == 324
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in ref.items()}


def test_same_outputs_as_sam_med3d() -> None:
    medim = pytest.importorskip("medim.models.sam_med3d")
    size, patch, width, depth = 64, 16, 96, 4  # 4³ grid: the 14-window pads to 14³
    ref = medim.SAM_Med3D(
        image_encoder=medim.ImageEncoderViT3D(
            depth=depth,
            embed_dim=width,
            img_size=size,
            mlp_ratio=4,
            norm_layer=lambda d: torch.nn.LayerNorm(d, eps=1e-6),
            num_heads=4,
            patch_size=patch,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=[1, 3],
            window_size=14,
            out_chans=384,
            in_chans=1,
        ),
        prompt_encoder=medim.PromptEncoder3D(
            embed_dim=384,
            image_embedding_size=(4, 4, 4),
            input_image_size=(size,) * 3,
            mask_in_chans=16,
        ),
        mask_decoder=medim.MaskDecoder3D(num_multimask_outputs=3, transformer_dim=384),
    ).eval()
    randomize_(ref, seed=7, scale=0.02)
    config = {
        **SAM_MED3D,
        "encoder_embed_dim": width,
        "encoder_depth": depth,
        "encoder_num_heads": 4,
        "encoder_global_attn_indexes": (1, 3),
    }
    ours = _build_sam(image_size=size, **config).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    gen = torch.Generator().manual_seed(8)
    image = torch.randn(2, 1, size, size, size, generator=gen)
    points = (torch.rand(2, 2, 3, generator=gen) * size, torch.tensor([[1, 0], [1, 1]]))
    masks = torch.randn(2, 1, 16, 16, 16, generator=gen)
    emb_grad = ours.encode(image)  # with gradients: the explicit attention path on CPU
    with torch.no_grad():
        emb_ref = ref.image_encoder(image)
        emb = ours.encode(image)  # without: SDPA with the bias as a float mask
        torch.testing.assert_close(emb, emb_ref, atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(emb_grad, emb_ref, atol=1e-4, rtol=1e-5)
        for mask in (None, masks):
            logits, iou = ours.decode(emb_ref, points=points, masks=mask)
            for i in range(2):
                sparse, dense = ref.prompt_encoder(
                    points=(points[0][i : i + 1], points[1][i : i + 1]),
                    boxes=None,
                    masks=None if mask is None else mask[i : i + 1],
                )
                logits_ref, iou_ref = ref.mask_decoder(
                    emb_ref[i : i + 1], ref.prompt_encoder.get_dense_pe(), sparse, dense, False
                )
                torch.testing.assert_close(logits[i : i + 1], logits_ref, atol=1e-5, rtol=0)
                torch.testing.assert_close(iou[i : i + 1], iou_ref, atol=1e-5, rtol=0)


# ------------------------------------------- SAM-Med3D at full size: the released architecture
FULL = 128  # SAM-Med3D's input side: an 8³ grid, windows of 14 padded with zero tokens
# Clicks as SAM-Med3D takes them: voxel indices [N, P, 3] in axis order, labels 1 / 0.
CLICKS = (
    torch.tensor(
        [[[64.0, 60.0, 70.0], [20.0, 100.0, 33.0], [90.0, 12.0, 127.0], [5.0, 64.0, 64.0]]]
    ),
    torch.tensor([[1, 0, 1, 0]]),
)


@pytest.fixture(scope="module")
def sam_med3d_pair() -> tuple[torch.nn.Module, torch.nn.Module]:
    """medim's SAM-Med3D (randomised, zero-initialised tables included) and ``sam_med3d()``."""
    medim = pytest.importorskip("medim")
    torch.manual_seed(0)
    ref = medim.create_model("SAM-Med3D", pretrained=False).eval()
    randomize_(ref, seed=11, scale=0.02)
    ours = sam_med3d().eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


@pytest.fixture(scope="module")
def sam_med3d_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    """A z-scored-like 1x1x128³ volume and a previous low-res mask (32³ logits)."""
    gen = torch.Generator().manual_seed(12)
    image = torch.randn(1, 1, FULL, FULL, FULL, generator=gen)
    prev = 3 * torch.randn(1, 1, FULL // 4, FULL // 4, FULL // 4, generator=gen)
    return image, prev


def test_sam_med3d_builder_has_the_released_keys(sam_med3d_pair) -> None:
    ref, ours = sam_med3d_pair
    ref_sd, ours_sd = ref.state_dict(), ours.state_dict()
    assert len(ours_sd) == 324
    assert list(ours_sd) == list(ref_sd)
    assert {k: v.shape for k, v in ours_sd.items()} == {k: v.shape for k, v in ref_sd.items()}
    assert sum(p.numel() for p in ours.parameters()) == 100_509_232  # SAM-Med3D's count
    assert ours_sd["image_encoder.patch_embed.proj.weight"].shape == (768, 1, 16, 16, 16)
    assert SAM_REGISTRY["sam_med3d"] is sam_med3d


def test_sam_med3d_preprocess_only_pads(sam_med3d_pair) -> None:
    """SAM-Med3D feeds z-scored volumes as they are: no RGB mean / std (its issue #120)."""
    _, ours = sam_med3d_pair
    gen = torch.Generator().manual_seed(13)
    full = torch.randn(1, 1, FULL, FULL, FULL, generator=gen)
    assert torch.equal(ours.preprocess(full), full)
    part = torch.randn(1, 1, 100, FULL, 90, generator=gen)
    padded = ours.preprocess(part)
    assert padded.shape == (1, 1, FULL, FULL, FULL)
    assert torch.equal(padded[:, :, :100, :, :90], part)
    assert padded[:, :, 100:].abs().sum() == 0 and padded[..., 90:].abs().sum() == 0


def test_sam_med3d_full_size_same_outputs_as_medim(sam_med3d_pair, sam_med3d_inputs) -> None:
    """The acceptance test: 128³, several clicks with a negative one, a previous mask."""
    ref, ours = sam_med3d_pair
    image, prev = sam_med3d_inputs
    with torch.no_grad():
        # medim's own path, as SAM-Med3D's train.py / infer_utils call it
        emb_ref = ref.image_encoder(image)
        sparse, dense = ref.prompt_encoder(points=CLICKS, boxes=None, masks=prev)
        logits_ref, iou_ref = ref.mask_decoder(
            image_embeddings=emb_ref,
            image_pe=ref.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )
        logits, iou = ours(ours.preprocess(image), points=CLICKS, masks=prev)
        up_ref = F.interpolate(logits_ref, size=(FULL,) * 3, mode="trilinear", align_corners=False)
        up = ours.postprocess(logits, FULL)
    assert logits.shape == logits_ref.shape == (1, 1, 32, 32, 32)
    assert iou.shape == iou_ref.shape == (1, 1)
    torch.testing.assert_close(logits, logits_ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(iou, iou_ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(up, up_ref, atol=1e-5, rtol=0)
    # not vacuous: the logits vary, and the clicks and the previous mask change them
    assert logits_ref.std() > 1e-2
    with torch.no_grad():
        flipped, _ = ours.decode(emb_ref, points=(CLICKS[0], 1 - CLICKS[1]), masks=prev)
        no_mask, _ = ours.decode(emb_ref, points=CLICKS, masks=None)
    assert (flipped - logits).abs().max() > 1e-3
    assert (no_mask - logits).abs().max() > 1e-3


def test_tiny_3d_by_name() -> None:
    model = build_sam("tiny", spatial_dims=3, image_size=32).eval()
    assert model.spatial_dims == 3 and model.embedding_size == 4
    gen = torch.Generator().manual_seed(14)
    image = torch.randn(1, 1, 32, 32, 32, generator=gen)
    points = (torch.tensor([[[3.0, 17.0, 30.0], [20.0, 5.0, 9.0]]]), torch.tensor([[1, 0]]))
    with torch.no_grad():
        logits, iou = model(
            model.preprocess(image), points=points, masks=torch.zeros(1, 1, 16, 16, 16)
        )
    assert logits.shape == (1, 1, 16, 16, 16) and iou.shape == (1, 1)
    assert torch.isfinite(logits).all()
