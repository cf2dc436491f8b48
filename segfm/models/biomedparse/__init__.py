"""BiomedParse v2: FocalNet, FPN pixel decoder, BoltzFormer text decoder, SEEM text encoder."""

from segfm.models.biomedparse.biomedparse import (
    BiomedParse,
    BiomedParseOutput,
    ImageFeatures,
    MaskFormerHead,
)
from segfm.models.biomedparse.boltzformer import BoltzFormerTextDecoder, boltzmann_mask
from segfm.models.biomedparse.build import (
    BIOMEDPARSE_REGISTRY,
    biomedparse_tiny,
    biomedparse_v2,
    build_biomedparse,
)
from segfm.models.biomedparse.focalnet import FocalNet
from segfm.models.biomedparse.pixel_decoder import TransformerEncoderPixelDecoder
from segfm.models.biomedparse.text_encoder import TextEncoder, load_tokenizer

__all__ = [
    "BIOMEDPARSE_REGISTRY",
    "BiomedParse",
    "BiomedParseOutput",
    "BoltzFormerTextDecoder",
    "FocalNet",
    "ImageFeatures",
    "MaskFormerHead",
    "TextEncoder",
    "TransformerEncoderPixelDecoder",
    "biomedparse_tiny",
    "biomedparse_v2",
    "boltzmann_mask",
    "build_biomedparse",
    "load_tokenizer",
]
