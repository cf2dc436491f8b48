"""Builders of BiomedParse networks, one per released size, and a registry."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from segfm.models.biomedparse.biomedparse import BiomedParse, MaskFormerHead
from segfm.models.biomedparse.boltzformer import BoltzFormerTextDecoder
from segfm.models.biomedparse.focalnet import FocalNet
from segfm.models.biomedparse.pixel_decoder import TransformerEncoderPixelDecoder
from segfm.models.biomedparse.text_encoder import TextEncoder


def _build(
    embed_dim: int,
    depths: Sequence[int],
    focal_levels: Sequence[int],
    width: int,
    heads: int,
    ffn_dim: int,
    encoder_layers: int,
    decoder_layers: int,
    num_queries: int,
    edge_queries: int,
    text_width: int,
    text_layers: int,
    text_heads: int,
    context_length: int,
    vocab_size: int,
    groups: int,
) -> BiomedParse:
    backbone = FocalNet(embed_dim, depths, focal_levels, [3] * len(depths))
    pixel_decoder = TransformerEncoderPixelDecoder(
        tuple(backbone.num_features), width, width, encoder_layers, heads, ffn_dim, groups
    )
    text = TextEncoder(context_length, vocab_size, text_width, text_layers, text_heads, width)
    predictor = BoltzFormerTextDecoder(
        text, width, num_queries, heads, ffn_dim, decoder_layers, width, width
    )
    return BiomedParse(backbone, MaskFormerHead(pixel_decoder, predictor), edge_queries)


def biomedparse_v2() -> BiomedParse:
    """BiomedParse v2 as released (``biomedparse_v2.ckpt``, 372M parameters)."""
    return _build(
        embed_dim=192,
        depths=(2, 2, 18, 2),
        focal_levels=(4, 4, 4, 4),
        width=512,
        heads=8,
        ffn_dim=2048,
        encoder_layers=6,
        decoder_layers=9,
        num_queries=16,
        edge_queries=4,
        text_width=512,
        text_layers=12,
        text_heads=8,
        context_length=77,
        vocab_size=49408,
        groups=32,
    )


def biomedparse_tiny(vocab_size: int = 49408, context_length: int = 16) -> BiomedParse:
    """A few-layer BiomedParse for tests and demos (same structure, small widths).

    Args:
        vocab_size: Vocabulary of the tokenizer it is used with.
        context_length: Tokens per prompt.
    """
    return _build(
        embed_dim=8,
        depths=(1, 1, 1, 1),
        focal_levels=(2, 2, 2, 2),
        width=32,
        heads=2,
        ffn_dim=64,
        encoder_layers=1,
        decoder_layers=2,
        num_queries=6,
        edge_queries=2,
        text_width=32,
        text_layers=1,
        text_heads=2,
        context_length=context_length,
        vocab_size=vocab_size,
        groups=8,
    )


BIOMEDPARSE_REGISTRY: dict[str, Callable[[], BiomedParse]] = {
    "v2": biomedparse_v2,
    "tiny": biomedparse_tiny,
}


def build_biomedparse(arch: str) -> BiomedParse:
    """Build a registered BiomedParse (``v2`` or ``tiny``)."""
    if arch not in BIOMEDPARSE_REGISTRY:
        msg = f"unknown BiomedParse arch {arch!r}; choose one of {sorted(BIOMEDPARSE_REGISTRY)}"
        raise ValueError(msg)
    return BIOMEDPARSE_REGISTRY[arch]()
