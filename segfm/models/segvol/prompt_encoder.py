"""SegVol's 3D prompt encoder: points, boxes and a text token for the mask decoder."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from segfm.models.prompt_encoder import PositionEmbeddingRandom, PromptEncoder
from segfm.nn import LayerNorm2d


class SegVolPositionEmbedding(PositionEmbeddingRandom):
    """SegVol's Fourier features: ``[sin(f), cos(f)]`` with ``f = 2 pi (2p - 1) G``.

    ``G`` is ``[3, embed_dim / 2]`` (SAM-Med3D's variant uses ``[3, embed_dim / 3]`` and
    ``[sin, cos, sin]``). The axes are those of :class:`PositionEmbeddingRandom` in 3D, which is
    where SegVol's compatibility quirk comes from (see :class:`SegVolPromptEncoder`).

    Args:
        num_pos_feats: Columns of ``G``; the encoding has ``2 * num_pos_feats`` channels.
    """

    def __init__(self, num_pos_feats: int) -> None:
        super().__init__(3, num_pos_feats)

    def encode(self, coords: Tensor) -> Tensor:
        """Encode coordinates normalised to ``[0, 1]``: ``[..., 3]`` to ``[..., 2 * F]``."""
        coords = 2 * math.pi * ((2 * coords - 1) @ self.positional_encoding_gaussian_matrix)
        return torch.cat([torch.sin(coords), torch.cos(coords)], dim=-1)


class SegVolPromptEncoder(PromptEncoder):
    """SegVol's ``PromptEncoder`` (same parameter names), with the text token appended.

    Points are voxel indices ``(d, h, w)`` of the encoder input with labels 1 (positive),
    0 (negative) or -1 (padding); boxes are ``(d0, h0, w0, d1, h1, w1)`` with inclusive corners.

    Compatibility quirk of the released weights: the dense positional encoding of the embedding
    grid takes its first coordinate along ``h`` and its second along ``d``, while a point's
    first coordinate is its ``d`` index divided by the input's ``h`` size (256) and its second
    the ``h`` index divided by the ``d`` size (32); the third (``w``) is consistent. So point
    and box tokens do not sit where the grid encoding puts their voxels. SegVol was trained
    that way, so :class:`PositionEmbeddingRandom` reproduces it exactly.

    ``mask_downscaling`` is a 2D leftover of SAM that SegVol never calls (no mask prompts); it
    is built with SegVol's 2D shapes only so that the state dict has the released keys.

    Args:
        embed_dim: Prompt width (768 for SegVol).
        image_embedding_size: Grid ``g`` of the image embedding, ``(D, H, W)``.
        input_image_size: Encoder input size ``(D, H, W)``.
        mask_in_chans: Hidden channels of the unused mask downscaling.
    """

    def __init__(
        self,
        embed_dim: int,
        image_embedding_size: Sequence[int],
        input_image_size: Sequence[int],
        mask_in_chans: int = 16,
    ) -> None:
        if embed_dim <= 0 or embed_dim % 6:
            msg = f"embed_dim must be a positive multiple of 6, got {embed_dim}"
            raise ValueError(msg)
        super().__init__(
            spatial_dims=3,
            embed_dim=embed_dim,
            image_embedding_size=tuple(image_embedding_size),
            input_image_size=tuple(input_image_size),
            mask_in_chans=mask_in_chans,
            num_point_embeddings=4,
        )
        self.pe_layer = SegVolPositionEmbedding(embed_dim // 2)
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans // 4),
            nn.GELU(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            nn.GELU(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )

    def forward(  # type: ignore[override]
        self,
        points: tuple[Tensor, Tensor] | None = None,
        boxes: Tensor | None = None,
        text_embedding: Tensor | None = None,
        batch_size: int | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Embed one prompt set per row.

        Args:
            points: Coordinates ``[N, P, 3]`` and labels ``[N, P]``, or None.
            boxes: ``[N, 6]``, or None.
            text_embedding: Text tokens ``[N, C]``, or None.
            batch_size: ``N`` when no prompt is given.

        Returns:
            Sparse tokens ``[N, P', C]`` (points, +1 padding point without a box, +2 box
            corners, +1 text token, in that order) and the dense ``no_mask_embed``
            ``[N, C, *g]``.
        """
        if text_embedding is not None:
            if boxes is None and points is None:
                batch_size = text_embedding.shape[0]
            elif text_embedding.shape[0] != (boxes if points is None else points[0]).shape[0]:
                msg = "text_embedding needs one row per prompt set, like points and boxes"
                raise ValueError(msg)
        sparse, dense = super().forward(points, boxes, None, batch_size)
        if text_embedding is not None:
            sparse = torch.cat([sparse, text_embedding[:, None].to(sparse.dtype)], dim=1)
        return sparse, dense
