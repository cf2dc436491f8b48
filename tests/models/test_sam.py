"""segfm's SAM network on its own: shapes in 2D and 3D, batching, argument checks."""

from __future__ import annotations

import pytest
import torch

from segfm.models import (
    SAM_REGISTRY,
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
    build_sam,
    sam_tiny,
)

# Tiny networks: 2D 64 px (8x8 grid, 32x32 masks), 3D 32³ (4³ grid, 16³ masks; window 3 pads to 6³).
CONFIGS = {
    2: dict(spatial_dims=2, image_size=64),
    3: dict(spatial_dims=3, image_size=32, window_size=3),
}


@pytest.fixture(scope="module", params=[2, 3], ids=["2d", "3d"])
def tiny(request) -> Sam:
    torch.manual_seed(0)
    return sam_tiny(**CONFIGS[request.param]).eval()


def _images(model: Sam, n: int) -> torch.Tensor:
    channels = model.image_encoder.in_chans
    return torch.randn(n, channels, *(model.image_size,) * model.spatial_dims)


def _boxes(model: Sam, n: int) -> torch.Tensor:
    lo = torch.full((n, model.spatial_dims), 4.0)
    return torch.cat([lo, lo + 20], dim=1)


def _points(model: Sam, n: int, p: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.rand(n, p, model.spatial_dims) * model.image_size, torch.ones(
        n, p, dtype=torch.long
    )


def test_shapes(tiny: Sam) -> None:
    sd, g = tiny.spatial_dims, tiny.embedding_size
    images = _images(tiny, 2)
    emb = tiny.encode(images)
    assert emb.shape == (2, 64 if sd == 2 else 48, *(g,) * sd)
    masks = torch.randn(2, 1, *(4 * g,) * sd)
    for multimask, m in ((False, 1), (True, 3)):
        logits, iou = tiny.decode(
            emb,
            points=_points(tiny, 2, 3),
            boxes=_boxes(tiny, 2),
            masks=masks,
            multimask_output=multimask,
        )
        assert logits.shape == (2, m, *(4 * g,) * sd)
        assert iou.shape == (2, m)
    logits, iou = tiny(images, points=_points(tiny, 2, 1))
    assert logits.shape == (2, 1, *(4 * g,) * sd)
    assert tiny.postprocess(logits, 40).shape == (2, 1, *(40,) * sd)


def test_decode_without_prompts_gives_one_mask_per_image(tiny: Sam) -> None:
    emb = tiny.encode(_images(tiny, 2))
    logits, iou = tiny.decode(emb)
    assert logits.shape[:2] == (2, 1) and iou.shape == (2, 1)


def test_batch_of_two_images_with_one_box_each(tiny: Sam) -> None:
    images, boxes = _images(tiny, 2), _boxes(tiny, 2)
    boxes[1] += 10
    with torch.no_grad():
        logits, iou = tiny(images, boxes=boxes)
        for i in range(2):
            one_logits, one_iou = tiny(images[i : i + 1], boxes=boxes[i : i + 1])
            torch.testing.assert_close(logits[i : i + 1], one_logits, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(iou[i : i + 1], one_iou, atol=1e-5, rtol=1e-5)


def test_decode_many_prompts_on_shared_embeddings(tiny: Sam) -> None:
    with torch.no_grad():
        emb = tiny.encode(_images(tiny, 2))
        boxes = _boxes(tiny, 3)
        boxes[2] += 5
        index = torch.tensor([1, 0, 1])
        logits, iou = tiny.decode(emb, boxes=boxes, image_index=index)
        assert logits.shape[0] == 3
        for j, i in enumerate(index.tolist()):
            one_logits, one_iou = tiny.decode(emb[i : i + 1], boxes=boxes[j : j + 1])
            torch.testing.assert_close(logits[j : j + 1], one_logits, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(iou[j : j + 1], one_iou, atol=1e-5, rtol=1e-5)
        # one image, several prompt sets: broadcast without image_index
        broadcast, _ = tiny.decode(emb[1:], boxes=boxes[[0, 2]])
        torch.testing.assert_close(broadcast, logits[[0, 2]], atol=1e-5, rtol=1e-5)


def test_forward_is_differentiable_and_state_dict_has_no_pixel_buffers() -> None:
    model = sam_tiny(image_size=64)
    logits, iou = model(torch.randn(1, 3, 64, 64), boxes=torch.tensor([[4.0, 4.0, 40.0, 30.0]]))
    (logits.mean() + iou.mean()).backward()
    assert model.image_encoder.blocks[0].attn.rel_pos_h.grad is not None
    assert model.image_encoder.patch_embed.proj.weight.grad.abs().sum() > 0
    assert not any("pixel_" in k for k in model.state_dict())
    assert model.pixel_mean.shape == (3, 1, 1)


def test_preprocess_normalises_and_pads() -> None:
    model = sam_tiny(image_size=64)
    x = model.preprocess(torch.full((1, 3, 50, 40), 123.675))
    assert x.shape == (1, 3, 64, 64)
    assert x[0, 0, :50, :40].abs().max() < 1e-5 and x[0, :, 50:].abs().max() == 0


def test_registry_and_overrides() -> None:
    assert set(SAM_REGISTRY) >= {"vit_b", "vit_l", "vit_h", "tiny"}
    model = build_sam("tiny", image_size=32, encoder_depth=2, encoder_global_attn_indexes=(1,))
    assert (
        model.image_size == 32
        and model.embedding_size == 4
        and len(model.image_encoder.blocks) == 2
    )
    with pytest.raises(ValueError, match=r"unknown SAM architecture 'vit_x'.*tiny.*vit_b"):
        build_sam("vit_x")


def _decoder(spatial_dims: int = 2, dim: int = 32) -> MaskDecoder:
    return MaskDecoder(spatial_dims, dim, TwoWayTransformer(1, dim, 2, 64))


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: ImageEncoderViT(4), "spatial_dims must be one of"),
        (
            lambda: ImageEncoderViT(2, img_size=100, patch_size=16),
            "img_size must be a positive multiple",
        ),
        (
            lambda: ImageEncoderViT(2, img_size=64, embed_dim=30, num_heads=4),
            "num_heads must be a positive divisor",
        ),
        (
            lambda: ImageEncoderViT(2, img_size=64, depth=2, global_attn_indexes=(2,)),
            r"global_attn_indexes",
        ),
        (lambda: ImageEncoderViT(2, img_size=64, window_size=-1), "window_size must be >= 0"),
        (lambda: PromptEncoder(3, 64, 4, 32, 16), "embed_dim must be a positive multiple of 3"),
        (lambda: PromptEncoder(2, 64, 4, 32, 6), "mask_in_chans"),
        (lambda: PromptEncoder(2, 64, 4, 32, 16, num_point_embeddings=3), "num_point_embeddings"),
        (lambda: PromptEncoder(2, 64, (4, 4, 4), 32, 16), "image_embedding_size"),
        (lambda: MaskDecoder(2, 36, TwoWayTransformer(1, 36, 2, 64)), "transformer_dim"),
        (lambda: TwoWayTransformer(1, 64, 3, 64), "num_heads must divide"),
        (
            lambda: Sam(
                ImageEncoderViT(2, 64, 8, out_chans=32, depth=1, embed_dim=32, num_heads=2),
                PromptEncoder(3, 33, 8, 64, 16),
                _decoder(),
            ),
            "same spatial_dims",
        ),
        (
            lambda: Sam(
                ImageEncoderViT(2, 64, 8, out_chans=32, depth=1, embed_dim=32, num_heads=2),
                PromptEncoder(2, 32, 4, 32, 16),
                _decoder(),
            ),
            "prompt_encoder is made for",
        ),
        (
            lambda: Sam(
                ImageEncoderViT(2, 64, 8, out_chans=32, depth=1, embed_dim=32, num_heads=2),
                PromptEncoder(2, 32, 8, 64, 16),
                _decoder(),
                pixel_mean=(0.0,),
            ),
            "pixel_mean",
        ),
    ],
)
def test_bad_arguments(build, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build()


def test_widths_must_agree() -> None:
    encoder = ImageEncoderViT(2, 64, 8, out_chans=48, depth=1, embed_dim=32, num_heads=2)
    with pytest.raises(ValueError, match=r"must be equal, got \(48, 32, 32\)"):
        Sam(encoder, PromptEncoder(2, 32, 8, 64, 16), _decoder())


def test_bad_inputs() -> None:
    model = sam_tiny(image_size=64)
    emb = model.encode(torch.randn(2, 3, 64, 64))
    with pytest.raises(ValueError, match=r"expects inputs \[B, 3, 64, 64\]"):
        model.encode(torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match=r"boxes must be \[N, 4\]"):
        model.decode(emb, boxes=torch.zeros(2, 6))
    with pytest.raises(ValueError, match=r"points must be coords \[N, P, 2\]"):
        model.decode(emb, points=(torch.zeros(2, 1, 3), torch.ones(2, 1)))
    with pytest.raises(ValueError, match=r"masks must be \[N, 1, 32, 32\]"):
        model.decode(emb, masks=torch.zeros(2, 1, 16, 16))
    with pytest.raises(ValueError, match="same number of rows"):
        model.decode(emb, boxes=torch.zeros(2, 4), masks=torch.zeros(1, 1, 32, 32))
    with pytest.raises(ValueError, match="3 prompt sets for 2 images"):
        model.decode(emb, boxes=torch.zeros(3, 4))
    with pytest.raises(ValueError, match="image_index must be an integer tensor"):
        model.decode(emb, boxes=torch.zeros(3, 4), image_index=torch.tensor([0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match=r"image_embeddings must be \[B, C, 8, 8\]"):
        model.decode(emb[..., :4], boxes=torch.zeros(2, 4))
    points_only = sam_tiny(spatial_dims=3, image_size=32, num_point_embeddings=2)
    emb3 = points_only.encode(torch.randn(1, 1, 32, 32, 32))
    with pytest.raises(ValueError, match="no box embeddings"):
        points_only.decode(emb3, boxes=torch.zeros(1, 6))
