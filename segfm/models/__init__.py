"""Networks with the parameter names of their released checkpoints."""

from segfm.models.build_sam import (
    SAM_REGISTRY,
    build_sam,
    sam_med3d,
    sam_tiny,
    sam_vit_b,
    sam_vit_h,
    sam_vit_l,
)
from segfm.models.image_encoder import ImageEncoderViT
from segfm.models.mask_decoder import MaskDecoder
from segfm.models.prompt_encoder import PositionEmbeddingRandom, PromptEncoder
from segfm.models.sam import Sam
from segfm.models.transformer import TwoWayTransformer

__all__ = [
    "SAM_REGISTRY",
    "ImageEncoderViT",
    "MaskDecoder",
    "PositionEmbeddingRandom",
    "PromptEncoder",
    "Sam",
    "TwoWayTransformer",
    "build_sam",
    "sam_med3d",
    "sam_tiny",
    "sam_vit_b",
    "sam_vit_h",
    "sam_vit_l",
]
