"""SAM sizes by name: one function per released size, one private builder, a registry.

Hyper-parameters of ``vit_b``/``vit_l``/``vit_h`` are those of segment-anything's
``build_sam.py``, those of ``sam_med3d`` SAM-Med3D's ``build_sam3D_vit_b_ori`` (the architecture
of its released ``sam_med3d.pth`` and ``sam_med3d_turbo.pth``); ``sam_tiny`` is a small network
for tests and CPU demos (2D or 3D). Every builder takes keyword overrides of :func:`_build_sam`'s
arguments (e.g. ``image_size=256`` for quick tests).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from segfm.models.image_encoder import ImageEncoderViT
from segfm.models.mask_decoder import MaskDecoder
from segfm.models.prompt_encoder import PromptEncoder
from segfm.models.sam import Sam
from segfm.models.transformer import TwoWayTransformer
from segfm.nn import RelPosStyle


def _build_sam(
    *,
    spatial_dims: int = 2,
    image_size: int,
    patch_size: int = 16,
    in_chans: int = 3,
    encoder_embed_dim: int,
    encoder_depth: int,
    encoder_num_heads: int,
    encoder_global_attn_indexes: Sequence[int],
    window_size: int = 14,
    rel_pos_style: RelPosStyle = "decomposed",
    prompt_embed_dim: int = 256,
    mask_in_chans: int = 16,
    num_point_embeddings: int = 4,
    decoder_depth: int = 2,
    decoder_num_heads: int = 8,
    decoder_mlp_dim: int = 2048,
    iou_head_hidden_dim: int = 256,
    pixel_mean: Sequence[float] = (123.675, 116.28, 103.53),
    pixel_std: Sequence[float] = (58.395, 57.12, 57.375),
) -> Sam:
    """Assemble a SAM network; shared by every size, 2D and 3D.

    Args:
        spatial_dims: 2 (SAM, MedSAM) or 3 (SAM-Med3D).
        image_size: Side of the square (cubic) encoder input.
        patch_size: ViT patch side.
        in_chans: Image channels.
        encoder_embed_dim: ViT width.
        encoder_depth: ViT blocks.
        encoder_num_heads: ViT attention heads.
        encoder_global_attn_indexes: ViT blocks with global attention.
        window_size: Attention window side of the other blocks.
        rel_pos_style: ``"sam_med3d"`` to reproduce SAM-Med3D's relative-position bias.
        prompt_embed_dim: Width of the image embedding, prompts and decoder.
        mask_in_chans: Hidden channels of the mask prompt encoder.
        num_point_embeddings: 4 with box prompts, 2 for points only (SAM-Med3D).
        decoder_depth: Two-way transformer blocks.
        decoder_num_heads: Two-way transformer heads.
        decoder_mlp_dim: Two-way transformer MLP width.
        iou_head_hidden_dim: Hidden width of the IoU head.
        pixel_mean: Per-channel mean of :meth:`Sam.preprocess`.
        pixel_std: Per-channel standard deviation of :meth:`Sam.preprocess`.

    Returns:
        The network, with freshly initialised weights.
    """
    if image_size <= 0 or patch_size <= 0 or image_size % patch_size:
        msg = f"image_size must be a positive multiple of patch_size={patch_size}, got {image_size}"
        raise ValueError(msg)
    embedding_size = image_size // patch_size
    return Sam(
        image_encoder=ImageEncoderViT(
            spatial_dims=spatial_dims,
            img_size=image_size,
            patch_size=patch_size,
            in_chans=in_chans,
            embed_dim=encoder_embed_dim,
            depth=encoder_depth,
            num_heads=encoder_num_heads,
            mlp_ratio=4.0,
            out_chans=prompt_embed_dim,
            qkv_bias=True,
            use_rel_pos=True,
            window_size=window_size,
            global_attn_indexes=tuple(encoder_global_attn_indexes),
            rel_pos_style=rel_pos_style,
        ),
        prompt_encoder=PromptEncoder(
            spatial_dims=spatial_dims,
            embed_dim=prompt_embed_dim,
            image_embedding_size=embedding_size,
            input_image_size=image_size,
            mask_in_chans=mask_in_chans,
            num_point_embeddings=num_point_embeddings,
        ),
        mask_decoder=MaskDecoder(
            spatial_dims=spatial_dims,
            transformer_dim=prompt_embed_dim,
            transformer=TwoWayTransformer(
                depth=decoder_depth,
                embedding_dim=prompt_embed_dim,
                num_heads=decoder_num_heads,
                mlp_dim=decoder_mlp_dim,
            ),
            num_multimask_outputs=3,
            iou_head_depth=3,
            iou_head_hidden_dim=iou_head_hidden_dim,
        ),
        pixel_mean=pixel_mean,
        pixel_std=pixel_std,
    )


def sam_vit_b(image_size: int = 1024, **overrides: Any) -> Sam:
    """SAM ViT-B (91M parameters; the base of MedSAM).

    Args:
        image_size: Encoder input side (1024 for the released weights).
        **overrides: Other arguments of :func:`_build_sam`.

    Returns:
        The network.
    """
    config: dict[str, Any] = {
        "encoder_embed_dim": 768,
        "encoder_depth": 12,
        "encoder_num_heads": 12,
        "encoder_global_attn_indexes": (2, 5, 8, 11),
    }
    return _build_sam(**{**config, "image_size": image_size, **overrides})


def sam_vit_l(image_size: int = 1024, **overrides: Any) -> Sam:
    """SAM ViT-L (308M parameters).

    Args:
        image_size: Encoder input side (1024 for the released weights).
        **overrides: Other arguments of :func:`_build_sam`.

    Returns:
        The network.
    """
    config: dict[str, Any] = {
        "encoder_embed_dim": 1024,
        "encoder_depth": 24,
        "encoder_num_heads": 16,
        "encoder_global_attn_indexes": (5, 11, 17, 23),
    }
    return _build_sam(**{**config, "image_size": image_size, **overrides})


def sam_vit_h(image_size: int = 1024, **overrides: Any) -> Sam:
    """SAM ViT-H (636M parameters).

    Args:
        image_size: Encoder input side (1024 for the released weights).
        **overrides: Other arguments of :func:`_build_sam`.

    Returns:
        The network.
    """
    config: dict[str, Any] = {
        "encoder_embed_dim": 1280,
        "encoder_depth": 32,
        "encoder_num_heads": 16,
        "encoder_global_attn_indexes": (7, 15, 23, 31),
    }
    return _build_sam(**{**config, "image_size": image_size, **overrides})


def tiny_config(spatial_dims: int = 2) -> dict[str, Any]:
    """Hyper-parameters of :func:`sam_tiny` (benchmarks build the official network with them).

    Args:
        spatial_dims: 2 or 3.

    Returns:
        Keyword arguments of :func:`_build_sam`, image size and spatial dims excluded.
    """
    config: dict[str, Any] = {
        "patch_size": 8,
        "in_chans": 3 if spatial_dims == 2 else 1,
        "encoder_embed_dim": 96,
        "encoder_depth": 4,
        "encoder_num_heads": 4,
        "encoder_global_attn_indexes": (1, 3),
        "window_size": 8,
        "prompt_embed_dim": 64 if spatial_dims == 2 else 48,
        "decoder_depth": 2,
        "decoder_num_heads": 4,
        "decoder_mlp_dim": 256,
        "iou_head_hidden_dim": 64,
    }
    if spatial_dims == 3:
        config |= {"pixel_mean": (0.0,), "pixel_std": (1.0,)}
    return config


def sam_tiny(image_size: int = 128, spatial_dims: int = 2, **overrides: Any) -> Sam:
    """A SAM of about 0.7M parameters that trains in seconds on a CPU (tests, demos).

    Patch 8, ViT width 96, 4 blocks of 4 heads, window 8, blocks 1 and 3 global; prompt and
    decoder width 64 (48 in 3D, which needs a multiple of 3), decoder 2 blocks of 4 heads,
    MLP 256, IoU head 64.

    Args:
        image_size: Encoder input side (a multiple of 8).
        spatial_dims: 2 or 3.
        **overrides: Other arguments of :func:`_build_sam`.

    Returns:
        The network.
    """
    config = tiny_config(spatial_dims)
    return _build_sam(
        **{**config, "spatial_dims": spatial_dims, "image_size": image_size, **overrides}
    )


def sam_med3d_config() -> dict[str, Any]:
    """Hyper-parameters of :func:`sam_med3d` (benchmarks and tests reuse them).

    Returns:
        Keyword arguments of :func:`_build_sam`, image size excluded.
    """
    return {
        "spatial_dims": 3,
        "patch_size": 16,
        "in_chans": 1,
        "encoder_embed_dim": 768,
        "encoder_depth": 12,
        "encoder_num_heads": 12,
        "encoder_global_attn_indexes": (2, 5, 8, 11),
        "window_size": 14,
        "rel_pos_style": "sam_med3d",
        "prompt_embed_dim": 384,
        "mask_in_chans": 16,
        "num_point_embeddings": 2,
        "decoder_depth": 2,
        "decoder_num_heads": 8,
        "decoder_mlp_dim": 2048,
        "iou_head_hidden_dim": 256,
        # SAM-Med3D feeds z-scored volumes and never applies SAM's RGB normalisation, so
        # ``Sam.preprocess`` only pads (x - 0) / 1 == x exactly.
        "pixel_mean": (0.0,),
        "pixel_std": (1.0,),
    }


def sam_med3d(image_size: int = 128, **overrides: Any) -> Sam:
    """SAM-Med3D ``vit_b_ori`` (100.5M parameters; also the architecture of SAM-Med3D-turbo).

    A 3D ViT-B on one-channel volumes: patch 16, width 768, 12 blocks of 12 heads, window 14,
    blocks 2, 5, 8 and 11 global, SAM-Med3D's relative-position bias; prompt and decoder width
    384, point prompts only (two point embeddings), masks at a quarter of the input side. Its
    state dict has the 324 keys of the released files.

    Args:
        image_size: Encoder input side (128 for the released weights).
        **overrides: Other arguments of :func:`_build_sam`.

    Returns:
        The network.
    """
    return _build_sam(**{**sam_med3d_config(), "image_size": image_size, **overrides})


SAM_REGISTRY: dict[str, Callable[..., Sam]] = {
    "vit_b": sam_vit_b,
    "vit_l": sam_vit_l,
    "vit_h": sam_vit_h,
    "sam_med3d": sam_med3d,
    "tiny": sam_tiny,
}


def build_sam(arch: str, **overrides: Any) -> Sam:
    """Build a SAM network by name.

    Args:
        arch: A key of :data:`SAM_REGISTRY` (``vit_b``, ``vit_l``, ``vit_h``, ``sam_med3d``,
            ``tiny``).
        **overrides: Keyword arguments of the size's builder (``image_size``, ...).

    Returns:
        The network, with freshly initialised weights.

    Raises:
        ValueError: If ``arch`` is unknown.
    """
    if arch not in SAM_REGISTRY:
        msg = f"unknown SAM architecture {arch!r}; choose one of {sorted(SAM_REGISTRY)}"
        raise ValueError(msg)
    return SAM_REGISTRY[arch](**overrides)
