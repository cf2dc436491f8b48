"""SegVol sizes by name: the released network, a tiny one for tests, a registry."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from transformers import CLIPTextConfig

from segfm.models.segvol.image_encoder import SegVolViT
from segfm.models.segvol.mask_decoder import SegVolMaskDecoder
from segfm.models.segvol.prompt_encoder import SegVolPromptEncoder
from segfm.models.segvol.segvol import SegVol
from segfm.models.segvol.text_encoder import TextEncoder
from segfm.models.transformer import TwoWayTransformer
from segfm.nn import as_tuple

PathLike = str | os.PathLike[str]


def _build_segvol(
    *,
    roi_size: Sequence[int],
    patch_size: Sequence[int],
    embed_dim: int,
    mlp_dim: int,
    num_layers: int,
    num_heads: int,
    decoder_heads: int,
    decoder_mlp_dim: int,
    iou_head_hidden_dim: int,
    text_config: CLIPTextConfig,
    clip_dir: PathLike | None,
) -> SegVol:
    """Assemble a SegVol network with fresh weights (shared by every size)."""
    roi = as_tuple(tuple(roi_size), 3, "roi_size")
    patch = as_tuple(tuple(patch_size), 3, "patch_size")
    image_encoder = SegVolViT(roi, patch, embed_dim, mlp_dim, num_layers, num_heads)
    grid = image_encoder.embedding_size
    return SegVol(
        image_encoder=image_encoder,
        prompt_encoder=SegVolPromptEncoder(embed_dim, grid, roi, mask_in_chans=16),
        mask_decoder=SegVolMaskDecoder(
            transformer_dim=embed_dim,
            transformer=TwoWayTransformer(
                depth=2, embedding_dim=embed_dim, num_heads=decoder_heads, mlp_dim=decoder_mlp_dim
            ),
            image_embedding_size=grid,
            iou_head_hidden_dim=iou_head_hidden_dim,
        ),
        text_encoder=TextEncoder(text_config, embed_dim, clip_dir),
    )


def segvol_base(
    clip_dir: PathLike | None = None,
    roi_size: Sequence[int] = (32, 256, 256),
    patch_size: Sequence[int] = (4, 16, 16),
) -> SegVol:
    """The released SegVol (181M parameters, the 474 keys of ``SegVol_v1.pth``).

    ViT-B (768 wide, 12 blocks of 12 heads, MLP 3072) on 32x256x256 volumes in 4x16x16
    patches; decoder width 768, two-way transformer of 2 blocks, 8 heads, MLP 2048; CLIP
    ViT-B/32's text tower (``CLIPTextConfig()``).

    Args:
        clip_dir: Folder of the CLIP tokenizer (needed for text prompts only).
        roi_size: Encoder input ``(D, H, W)``; the released weights need the default.
        patch_size: ViT patch ``(D, H, W)``.

    Returns:
        The network, with fresh weights.
    """
    return _build_segvol(
        roi_size=roi_size,
        patch_size=patch_size,
        embed_dim=768,
        mlp_dim=3072,
        num_layers=12,
        num_heads=12,
        decoder_heads=8,
        decoder_mlp_dim=2048,
        iou_head_hidden_dim=256,
        text_config=CLIPTextConfig(),
        clip_dir=clip_dir,
    )


def tiny_text_config(vocab_size: int = 1000) -> CLIPTextConfig:
    """A CLIP text configuration of 2 layers, width 32 (tests and demos).

    The last two token ids are the start and end tokens (``<|startoftext|>``,
    ``<|endoftext|>``), as in CLIP's vocabulary.
    """
    return CLIPTextConfig(
        vocab_size=vocab_size,
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        projection_dim=32,
    )


def segvol_tiny(
    clip_dir: PathLike | None = None,
    roi_size: Sequence[int] = (16, 32, 32),
    patch_size: Sequence[int] = (4, 8, 8),
) -> SegVol:
    """A SegVol of about 0.3M parameters that trains in seconds on a CPU.

    Width 48, 2 ViT blocks of 4 heads (MLP 96), decoder 4 heads (MLP 96); the text model is the
    one configured in ``clip_dir/config.json`` if there is one, else :func:`tiny_text_config`.

    Args:
        clip_dir: Folder of a (tiny) CLIP tokenizer and, optionally, its config.
        roi_size: Encoder input ``(D, H, W)``.
        patch_size: ViT patch ``(D, H, W)``.

    Returns:
        The network, with fresh weights.
    """
    config = tiny_text_config()
    if clip_dir is not None and os.path.isfile(os.path.join(clip_dir, "config.json")):
        config = CLIPTextConfig.from_pretrained(str(clip_dir))
    return _build_segvol(
        roi_size=roi_size,
        patch_size=patch_size,
        embed_dim=48,
        mlp_dim=96,
        num_layers=2,
        num_heads=4,
        decoder_heads=4,
        decoder_mlp_dim=96,
        iou_head_hidden_dim=32,
        text_config=config,
        clip_dir=clip_dir,
    )


SEGVOL_REGISTRY: dict[str, Callable[..., SegVol]] = {"base": segvol_base, "tiny": segvol_tiny}


def build_segvol(arch: str, **overrides: Any) -> SegVol:
    """Build a SegVol network by name (``base`` or ``tiny``).

    Args:
        arch: A key of :data:`SEGVOL_REGISTRY`.
        **overrides: Keyword arguments of the size's builder (``clip_dir``, ``roi_size``...).

    Returns:
        The network, with fresh weights.

    Raises:
        ValueError: If ``arch`` is unknown.
    """
    if arch not in SEGVOL_REGISTRY:
        msg = f"unknown SegVol architecture {arch!r}; choose one of {sorted(SEGVOL_REGISTRY)}"
        raise ValueError(msg)
    return SEGVOL_REGISTRY[arch](**overrides)
