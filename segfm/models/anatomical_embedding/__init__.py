"""SAM / SAM++ / Cross-SAM: self-supervised anatomical embeddings (ResNet3d-18 + FPN heads)."""

from segfm.models.anatomical_embedding.build import (
    BUILDERS,
    build_embedding_model,
    sam_embedding,
    tiny_embedding,
)
from segfm.models.anatomical_embedding.fpn3d import FPN3d
from segfm.models.anatomical_embedding.network import (
    COARSE_STRIDE,
    FINE_STRIDE,
    AnatomicalEmbeddingNet,
)
from segfm.models.anatomical_embedding.resnet3d import ResNet3d

__all__ = [
    "BUILDERS",
    "COARSE_STRIDE",
    "FINE_STRIDE",
    "AnatomicalEmbeddingNet",
    "FPN3d",
    "ResNet3d",
    "build_embedding_model",
    "sam_embedding",
    "tiny_embedding",
]
