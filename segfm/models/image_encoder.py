"""SAM's ViT image encoder (ViTDet backbone) for 2D images and 3D volumes.

Adapted from segment-anything's ``modeling/image_encoder.py``, itself from
https://github.com/facebookresearch/detectron2/blob/main/detectron2/modeling/backbone/vit.py
With ``spatial_dims=3`` it is SAM-Med3D's ``ImageEncoderViT3D`` (same parameter names).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from segfm.nn import (
    LayerNormNd,
    MLPBlock,
    RelPosStyle,
    check_spatial_dims,
    conv_type,
    rel_pos_attention,
    window_partition,
    window_unpartition,
)

# Checkpoint names of the per-axis relative position tables: 2D uses the last two.
REL_POS_NAMES = ("rel_pos_d", "rel_pos_h", "rel_pos_w")


class Attention(nn.Module):
    """Multi-head self-attention over a token grid, with decomposed relative-position bias.

    Args:
        dim: Token width.
        num_heads: Number of heads; must divide ``dim``.
        qkv_bias: Learn a bias for the query, key and value projections.
        use_rel_pos: Add the relative-position bias (tables ``rel_pos_h``, ``rel_pos_w`` and, in
            3D, ``rel_pos_d``, of shape ``[2 * size - 1, dim / num_heads]``).
        input_size: Grid size the tables are made for; required with ``use_rel_pos``.
        rel_pos_style: ``"decomposed"`` (SAM) or ``"sam_med3d"`` (SAM-Med3D's broadcasting,
            see :func:`segfm.nn.decomposed_rel_pos_bias`).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        use_rel_pos: bool = False,
        input_size: Sequence[int] | None = None,
        rel_pos_style: RelPosStyle = "decomposed",
    ) -> None:
        super().__init__()
        if num_heads <= 0 or dim % num_heads:
            msg = f"num_heads must be a positive divisor of dim={dim}, got {num_heads}"
            raise ValueError(msg)
        if use_rel_pos and (input_size is None or not 1 <= len(input_size) <= len(REL_POS_NAMES)):
            msg = f"use_rel_pos needs input_size with 1 to 3 axes, got {input_size!r}"
            raise ValueError(msg)
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        if rel_pos_style not in ("decomposed", "sam_med3d"):
            msg = f"rel_pos_style must be 'decomposed' or 'sam_med3d', got {rel_pos_style!r}"
            raise ValueError(msg)
        self.use_rel_pos = use_rel_pos
        self.rel_pos_style = rel_pos_style
        self.rel_pos_names: tuple[str, ...] = ()
        if use_rel_pos and input_size is not None:
            self.rel_pos_names = REL_POS_NAMES[-len(input_size) :]
            for name, size in zip(self.rel_pos_names, input_size, strict=True):
                self.register_parameter(
                    name, nn.Parameter(torch.zeros(2 * size - 1, dim // num_heads))
                )

    def forward(self, x: Tensor) -> Tensor:
        """Attend over all tokens of each grid.

        Args:
            x: Tokens ``[B, *S, C]``.

        Returns:
            Tokens ``[B, *S, C]``.
        """
        b, *size, c = x.shape
        # [B, *S, 3C] -> [3, B, heads, N, C/heads]
        qkv = self.qkv(x).reshape(b, math.prod(size), 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        tables = [getattr(self, name) for name in self.rel_pos_names] if self.use_rel_pos else None
        out = rel_pos_attention(q, k, v, tables, size, self.rel_pos_style)  # [B, heads, N, C/heads]
        return self.proj(out.transpose(1, 2).reshape(b, *size, c))


class Block(nn.Module):
    """Pre-norm transformer block with global or windowed attention.

    Args:
        dim: Token width.
        num_heads: Attention heads.
        mlp_ratio: Hidden width of the MLP relative to ``dim``.
        qkv_bias: Learn query/key/value biases.
        use_rel_pos: Use relative-position bias.
        window_size: Side of the attention windows; 0 attends globally.
        input_size: Token grid size of the encoder.
        norm_eps: Epsilon of the two LayerNorms.
        rel_pos_style: Relative-position style of the attention.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        qkv_bias: bool,
        use_rel_pos: bool,
        window_size: int,
        input_size: Sequence[int],
        norm_eps: float = 1e-6,
        rel_pos_style: RelPosStyle = "decomposed",
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        attn_size = tuple(input_size) if window_size == 0 else (window_size,) * len(input_size)
        self.attn = Attention(dim, num_heads, qkv_bias, use_rel_pos, attn_size, rel_pos_style)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = MLPBlock(embedding_dim=dim, mlp_dim=int(dim * mlp_ratio), act=nn.GELU)
        self.window_size = window_size

    def forward(self, x: Tensor) -> Tensor:
        """Apply attention and MLP with residual connections.

        Args:
            x: Tokens ``[B, *S, C]``.

        Returns:
            Tokens ``[B, *S, C]``.
        """
        shortcut = x
        x = self.norm1(x)
        if self.window_size > 0:
            size = tuple(x.shape[1:-1])
            x, padded = window_partition(x, self.window_size)  # [B * windows, w, .., w, C]
            x = window_unpartition(self.attn(x), self.window_size, padded, size)
        else:
            x = self.attn(x)
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    """Non-overlapping patches to tokens by a strided convolution (``proj``).

    Args:
        spatial_dims: 2 or 3.
        patch_size: Patch side length.
        in_chans: Input channels.
        embed_dim: Token width.
    """

    def __init__(self, spatial_dims: int, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = conv_type(spatial_dims)(
            in_chans, embed_dim, kernel_size=patch_size, stride=patch_size
        )

    def forward(self, x: Tensor) -> Tensor:
        """Embed patches.

        Args:
            x: Images ``[B, C, *S]``.

        Returns:
            Tokens ``[B, *g, embed_dim]`` with ``g = S / patch_size``.
        """
        return self.proj(x).movedim(1, -1)


class ImageEncoderViT(nn.Module):
    """ViT encoder of SAM (2D) and SAM-Med3D (3D): patches, transformer blocks, conv neck.

    Args:
        spatial_dims: 2 for images, 3 for volumes.
        img_size: Side of the square (cubic) input.
        patch_size: Patch side; ``img_size`` must be a multiple of it.
        in_chans: Input channels.
        embed_dim: Token width.
        depth: Number of transformer blocks.
        num_heads: Attention heads per block.
        mlp_ratio: MLP hidden width relative to ``embed_dim``.
        out_chans: Channels of the output embedding.
        qkv_bias: Learn query/key/value biases.
        use_rel_pos: Use relative-position bias in attention.
        window_size: Window side of non-global blocks (0: all blocks global).
        global_attn_indexes: Blocks that attend globally.
        use_abs_pos: Learn an absolute position embedding ``pos_embed`` ``[1, *g, embed_dim]``.
        norm_eps: Epsilon of all LayerNorms.
        rel_pos_style: ``"decomposed"`` (SAM and default) or ``"sam_med3d"`` to reproduce the
            relative-position bias SAM-Med3D's released weights were trained with.
    """

    def __init__(
        self,
        spatial_dims: int,
        img_size: int = 1024,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        out_chans: int = 256,
        qkv_bias: bool = True,
        use_rel_pos: bool = False,
        window_size: int = 0,
        global_attn_indexes: Sequence[int] = (),
        use_abs_pos: bool = True,
        norm_eps: float = 1e-6,
        rel_pos_style: RelPosStyle = "decomposed",
    ) -> None:
        super().__init__()
        check_spatial_dims(spatial_dims)
        if patch_size <= 0 or img_size <= 0 or img_size % patch_size:
            msg = f"img_size must be a positive multiple of patch_size={patch_size}, got {img_size}"
            raise ValueError(msg)
        for name, value in (
            ("in_chans", in_chans),
            ("embed_dim", embed_dim),
            ("depth", depth),
            ("out_chans", out_chans),
        ):
            if value <= 0:
                msg = f"{name} must be positive, got {value}"
                raise ValueError(msg)
        if window_size < 0:
            msg = f"window_size must be >= 0 (0: global attention), got {window_size}"
            raise ValueError(msg)
        if any(not 0 <= i < depth for i in global_attn_indexes):
            msg = f"global_attn_indexes must lie in [0, {depth}), got {list(global_attn_indexes)}"
            raise ValueError(msg)
        self.spatial_dims = spatial_dims
        self.img_size = img_size
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.out_chans = out_chans
        grid = (img_size // patch_size,) * spatial_dims

        self.patch_embed = PatchEmbed(spatial_dims, patch_size, in_chans, embed_dim)
        self.pos_embed: nn.Parameter | None = None
        if use_abs_pos:
            self.pos_embed = nn.Parameter(torch.zeros(1, *grid, embed_dim))
        self.blocks = nn.ModuleList(
            Block(
                dim=embed_dim,
                num_heads=num_heads,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                use_rel_pos=use_rel_pos,
                window_size=0 if i in global_attn_indexes else window_size,
                input_size=grid,
                norm_eps=norm_eps,
                rel_pos_style=rel_pos_style,
            )
            for i in range(depth)
        )
        conv = conv_type(spatial_dims)
        self.neck = nn.Sequential(
            conv(embed_dim, out_chans, kernel_size=1, bias=False),
            LayerNormNd(out_chans, eps=norm_eps),
            conv(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNormNd(out_chans, eps=norm_eps),
        )

    @property
    def embedding_size(self) -> int:
        """Side of the output embedding grid (``img_size / patch_size``)."""
        return self.img_size // self.patch_size

    def forward(self, x: Tensor) -> Tensor:
        """Encode images.

        Args:
            x: Preprocessed images ``[B, in_chans, *S]`` with every side equal to ``img_size``.

        Returns:
            Embeddings ``[B, out_chans, *g]``, ``g = img_size / patch_size`` per axis.
        """
        expected = (self.in_chans, *(self.img_size,) * self.spatial_dims)
        if tuple(x.shape[1:]) != expected:
            shape = ", ".join(map(str, expected))
            msg = f"image encoder expects inputs [B, {shape}], got {list(x.shape)}"
            raise ValueError(msg)
        x = self.patch_embed(x)  # [B, *g, E]
        if self.pos_embed is not None:
            x = x + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.neck(x.movedim(-1, 1))  # [B, out_chans, *g]
