"""SAM's prompt encoder: points, boxes and low-res masks to sparse and dense embeddings.

Adapted from segment-anything's ``modeling/prompt_encoder.py``; with ``spatial_dims=3`` and
``num_point_embeddings=2`` it is SAM-Med3D's ``PromptEncoder3D`` (same parameter names).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from segfm.nn import LayerNormNd, as_tuple, check_spatial_dims, conv_type


def _coordinate_axes(spatial_dims: int) -> tuple[int, ...]:
    """Grid axis that each point coordinate runs along: ``(1, 0)`` in 2D, ``(1, 0, 2)`` in 3D.

    In 2D this is SAM's (x, y) convention for an ``[H, W]`` grid. SAM-Med3D kept the same swap of
    the first two axes in its dense encoding, while its points are voxel indices in axis order:
    a quirk its released weights were trained with, reproduced here. (SAM-Med3D also divides by
    the other axis' length, which is the same on its cubic grids.)
    """
    return (1, 0, *range(2, spatial_dims))


class PositionEmbeddingRandom(nn.Module):
    """Positional encoding with random Gaussian spatial frequencies (Fourier features).

    A coordinate ``p`` in ``[0, 1]^n`` becomes ``[sin(f), cos(f)]`` (2D) or
    ``[sin(f), cos(f), sin(f)]`` (3D, as SAM-Med3D) with ``f = 2 pi (2p - 1) G``.

    Args:
        spatial_dims: 2 or 3.
        num_pos_feats: Columns of ``G`` (``positional_encoding_gaussian_matrix``,
            ``[spatial_dims, num_pos_feats]``); the encoding has ``spatial_dims * num_pos_feats``.
        scale: Standard deviation of ``G``; values <= 0 mean 1.
    """

    def __init__(self, spatial_dims: int, num_pos_feats: int, scale: float | None = None) -> None:
        super().__init__()
        self.spatial_dims = check_spatial_dims(spatial_dims)
        scale = 1.0 if scale is None or scale <= 0.0 else scale
        self.register_buffer(
            "positional_encoding_gaussian_matrix", scale * torch.randn(spatial_dims, num_pos_feats)
        )

    def encode(self, coords: Tensor) -> Tensor:
        """Encode coordinates normalised to ``[0, 1]``.

        Args:
            coords: ``[..., spatial_dims]``.

        Returns:
            ``[..., spatial_dims * num_pos_feats]``.
        """
        coords = 2 * coords - 1
        coords = coords @ self.positional_encoding_gaussian_matrix
        coords = 2 * math.pi * coords
        parts = [torch.sin(coords), torch.cos(coords)] * 2
        return torch.cat(parts[: self.spatial_dims], dim=-1)

    def forward(self, size: Sequence[int]) -> Tensor:
        """Encoding of the centre of every cell of a grid.

        Args:
            size: Grid size ``g`` (``[H, W]`` or ``[D, H, W]``).

        Returns:
            ``[C, *g]``.
        """
        device = self.positional_encoding_gaussian_matrix.device
        dtype = self.positional_encoding_gaussian_matrix.dtype
        axes = _coordinate_axes(self.spatial_dims)
        centres = []
        for axis in axes:  # coordinate c varies along grid axis axes[c]
            n = size[axis]
            line = (torch.arange(n, device=device, dtype=dtype) + 0.5) / n
            shape = [1] * self.spatial_dims
            shape[axis] = n
            centres.append(line.reshape(shape).expand(*size))
        pe = self.encode(torch.stack(centres, dim=-1))  # [*g, C]
        return pe.movedim(-1, 0)

    def forward_with_coords(self, coords: Tensor, image_size: Sequence[int]) -> Tensor:
        """Encode points given in input-image pixels.

        Args:
            coords: ``[B, N, spatial_dims]`` in the order of :func:`_coordinate_axes`.
            image_size: Input image size (``[H, W]`` or ``[D, H, W]``).

        Returns:
            ``[B, N, C]``.
        """
        dtype = self.positional_encoding_gaussian_matrix.dtype  # float32, or float64 in tests
        extent = torch.tensor(
            [float(image_size[a]) for a in _coordinate_axes(self.spatial_dims)],
            device=coords.device,
            dtype=dtype,
        )
        return self.encode(coords.to(dtype) / extent)


class PromptEncoder(nn.Module):
    """Embed point, box and mask prompts for SAM's mask decoder.

    Points have labels 1 (foreground), 0 (background) and -1 (padding, ignored); a box is
    encoded as its two corners. Coordinates are input pixels: ``(x, y)`` in 2D as in SAM (column,
    then row), and in 3D as in SAM-Med3D the voxel indices along the input's three spatial axes,
    in order.

    Args:
        spatial_dims: 2 or 3.
        embed_dim: Prompt embedding width; a multiple of ``spatial_dims`` so that the positional
            encoding fills it.
        image_embedding_size: Grid size ``g`` of the image embedding.
        input_image_size: Size of the encoder's input in pixels.
        mask_in_chans: Hidden channels of the mask downscaling convolutions (multiple of 4).
        num_point_embeddings: 4 = positive, negative, box corner 1, box corner 2 (SAM);
            2 = points only (SAM-Med3D), in which case boxes are refused.
    """

    def __init__(
        self,
        spatial_dims: int,
        embed_dim: int,
        image_embedding_size: int | Sequence[int],
        input_image_size: int | Sequence[int],
        mask_in_chans: int,
        num_point_embeddings: int = 4,
    ) -> None:
        super().__init__()
        check_spatial_dims(spatial_dims)
        if embed_dim <= 0 or embed_dim % spatial_dims:
            msg = f"embed_dim must be a positive multiple of {spatial_dims}, got {embed_dim}"
            raise ValueError(msg)
        if mask_in_chans <= 0 or mask_in_chans % 4:
            msg = f"mask_in_chans must be a positive multiple of 4, got {mask_in_chans}"
            raise ValueError(msg)
        if num_point_embeddings not in (2, 4):
            msg = (
                "num_point_embeddings must be 2 (points) or 4 (points and boxes), "
                f"got {num_point_embeddings}"
            )
            raise ValueError(msg)
        self.spatial_dims = spatial_dims
        self.embed_dim = embed_dim
        self.image_embedding_size = as_tuple(
            image_embedding_size, spatial_dims, "image_embedding_size"
        )
        self.input_image_size = as_tuple(input_image_size, spatial_dims, "input_image_size")
        self.mask_input_size = tuple(4 * s for s in self.image_embedding_size)
        self.num_point_embeddings = num_point_embeddings

        self.pe_layer = PositionEmbeddingRandom(spatial_dims, embed_dim // spatial_dims)
        self.point_embeddings = nn.ModuleList(
            nn.Embedding(1, embed_dim) for _ in range(num_point_embeddings)
        )
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        conv = conv_type(spatial_dims)
        self.mask_downscaling = nn.Sequential(
            conv(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNormNd(mask_in_chans // 4),
            nn.GELU(),
            conv(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNormNd(mask_in_chans),
            nn.GELU(),
            conv(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    @property
    def accepts_boxes(self) -> bool:
        """Whether box corner embeddings exist."""
        return self.num_point_embeddings >= 4

    def get_dense_pe(self) -> Tensor:
        """Positional encoding of the image embedding grid, ``[1, C, *g]``."""
        return self.pe_layer(self.image_embedding_size).unsqueeze(0)

    def _embed_points(self, coords: Tensor, labels: Tensor, pad: bool) -> Tensor:
        coords = coords + 0.5  # centre of the pixel
        if pad:  # a padding point stands in for the missing box, as in SAM
            coords = torch.cat(
                [coords, coords.new_zeros(coords.shape[0], 1, self.spatial_dims)], dim=1
            )
            labels = torch.cat([labels, labels.new_full((labels.shape[0], 1), -1)], dim=1)
        pe = self.pe_layer.forward_with_coords(coords, self.input_image_size)  # [N, P, C]
        labels = labels[..., None]
        embedding = torch.where(labels == -1, self.not_a_point_embed.weight, pe)
        embedding = torch.where(labels == 0, embedding + self.point_embeddings[0].weight, embedding)
        return torch.where(labels == 1, embedding + self.point_embeddings[1].weight, embedding)

    def _embed_boxes(self, boxes: Tensor) -> Tensor:
        corners = (boxes + 0.5).reshape(-1, 2, self.spatial_dims)  # [N, 2, spatial_dims]
        pe = self.pe_layer.forward_with_coords(corners, self.input_image_size)
        corner_embed = torch.cat([self.point_embeddings[2].weight, self.point_embeddings[3].weight])
        return pe + corner_embed  # [N, 2, C]

    def forward(
        self,
        points: tuple[Tensor, Tensor] | None,
        boxes: Tensor | None,
        masks: Tensor | None,
        batch_size: int | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Embed one prompt set per row.

        Args:
            points: Coordinates ``[N, P, spatial_dims]`` and labels ``[N, P]``, or None.
            boxes: Corners ``[N, 2 * spatial_dims]`` (``x0, y0, x1, y1`` in 2D), or None.
            masks: Low-res mask logits ``[N, 1, *4g]``, or None.
            batch_size: ``N`` when no prompt is given (default 1).

        Returns:
            Sparse embeddings ``[N, P', C]`` (``P'`` = points, +1 padding point without a box,
            +2 box corners) and dense embeddings ``[N, C, *g]``.
        """
        n = _prompt_count(points, boxes, masks, batch_size)
        device = self.no_mask_embed.weight.device
        sparse = torch.empty((n, 0, self.embed_dim), device=device)
        if points is not None:
            sparse = torch.cat(
                [sparse, self._embed_points(points[0], points[1], pad=boxes is None)], dim=1
            )
        if boxes is not None:
            if not self.accepts_boxes:
                msg = (
                    "this prompt encoder has no box embeddings "
                    f"(num_point_embeddings={self.num_point_embeddings}); pass points instead"
                )
                raise ValueError(msg)
            sparse = torch.cat([sparse, self._embed_boxes(boxes)], dim=1)
        if masks is not None:
            dense = self.mask_downscaling(masks)
        else:
            shape = (1, -1) + (1,) * self.spatial_dims
            dense = self.no_mask_embed.weight.reshape(shape).expand(
                n, -1, *self.image_embedding_size
            )
        return sparse, dense


def _prompt_count(
    points: tuple[Tensor, Tensor] | None,
    boxes: Tensor | None,
    masks: Tensor | None,
    default: int | None,
) -> int:
    """Number of prompt sets, checking that all given prompts agree."""
    counts = {
        name: t.shape[0]
        for name, t in (
            ("points", None if points is None else points[0]),
            ("boxes", boxes),
            ("masks", masks),
        )
        if t is not None
    }
    if len(set(counts.values())) > 1:
        msg = f"points, boxes and masks must have the same number of rows, got {counts}"
        raise ValueError(msg)
    if counts:
        return next(iter(counts.values()))
    return 1 if default is None else default
