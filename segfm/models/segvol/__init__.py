"""SegVol (Du et al., 2023) with the parameter names of its released checkpoint."""

from segfm.models.segvol.build import (
    SEGVOL_REGISTRY,
    build_segvol,
    segvol_base,
    segvol_tiny,
    tiny_text_config,
)
from segfm.models.segvol.image_encoder import SegVolViT
from segfm.models.segvol.mask_decoder import SegVolMaskDecoder
from segfm.models.segvol.prompt_encoder import SegVolPositionEmbedding, SegVolPromptEncoder
from segfm.models.segvol.segvol import SegVol
from segfm.models.segvol.text_encoder import TEMPLATE, TextEncoder

__all__ = [
    "SEGVOL_REGISTRY",
    "TEMPLATE",
    "SegVol",
    "SegVolMaskDecoder",
    "SegVolPositionEmbedding",
    "SegVolPromptEncoder",
    "SegVolViT",
    "TextEncoder",
    "build_segvol",
    "segvol_base",
    "segvol_tiny",
    "tiny_text_config",
]
