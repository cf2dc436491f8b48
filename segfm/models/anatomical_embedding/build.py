"""Builders of the anatomical embedding networks: the released size and a tiny one."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from segfm.models.anatomical_embedding.fpn3d import FPN3d
from segfm.models.anatomical_embedding.network import AnatomicalEmbeddingNet
from segfm.models.anatomical_embedding.resnet3d import ResNet3d

Arch = Literal["sam", "sam_pp", "cross_sam", "tiny", "tiny_pp"]


def _build(base_channels: int, embed_dim: int, semantic: bool) -> AnatomicalEmbeddingNet:
    backbone = ResNet3d(in_channels=1, base_channels=base_channels)
    fine_in = backbone.out_channels[:3]
    return AnatomicalEmbeddingNet(
        backbone,
        neck=FPN3d(fine_in, embed_dim),
        read_out_head=FPN3d(backbone.out_channels[3:], embed_dim),
        semantic_head=FPN3d(fine_in, embed_dim) if semantic else None,
    )


def sam_embedding(stage: Literal["sam", "sam_pp", "cross_sam"] = "sam") -> AnatomicalEmbeddingNet:
    """The released network: ResNet3d-18 (64-512 channels), 128-d embeddings.

    Args:
        stage: ``sam`` (``SAM.pth``: fine and coarse heads), ``sam_pp`` (``SAMv2_iter_20000.pth``)
            or ``cross_sam`` (``CrossSAM_iter_20000_ct_mr_inter_1.pth``), both with the
            semantic head.

    Returns:
        The network, randomly initialised.
    """
    if stage not in ("sam", "sam_pp", "cross_sam"):
        msg = f"stage must be sam, sam_pp or cross_sam, got {stage!r}"
        raise ValueError(msg)
    return _build(64, 128, semantic=stage != "sam")


def tiny_embedding(
    semantic: bool = False, base_channels: int = 4, embed_dim: int = 16
) -> AnatomicalEmbeddingNet:
    """A tiny network of the same layout and strides (tests and demos).

    Args:
        semantic: Add the semantic head.
        base_channels: Channels of ``layer1`` (doubled at each stage).
        embed_dim: Embedding channels.

    Returns:
        The network, randomly initialised.
    """
    return _build(base_channels, embed_dim, semantic)


#: builder of each architecture name
BUILDERS: dict[str, Callable[[], AnatomicalEmbeddingNet]] = {
    "sam": lambda: sam_embedding("sam"),
    "sam_pp": lambda: sam_embedding("sam_pp"),
    "cross_sam": lambda: sam_embedding("cross_sam"),
    "tiny": lambda: tiny_embedding(False),
    "tiny_pp": lambda: tiny_embedding(True),
}


def build_embedding_model(arch: str = "sam") -> AnatomicalEmbeddingNet:
    """Build a network by name (see :data:`BUILDERS`).

    Raises:
        ValueError: If ``arch`` is unknown.
    """
    if arch not in BUILDERS:
        msg = f"unknown anatomical embedding arch {arch!r}; choose one of {sorted(BUILDERS)}"
        raise ValueError(msg)
    return BUILDERS[arch]()
