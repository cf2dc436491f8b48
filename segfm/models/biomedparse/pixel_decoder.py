"""The pixel decoder of BiomedParse: an FPN whose coarsest level passes a transformer encoder.

Mask2Former's ``TransformerEncoderPixelDecoder`` as BiomedParse v2 configures it
(``transformer_encoder_fpn.yaml``: 6 post-norm encoder layers, width 512, GroupNorm(32)). The
coarsest feature (``res5``) is projected, encoded with sine positions, and refined top-down with
lateral 1x1 and output 3x3 convolutions; the three coarsest outputs feed the mask decoder and a
3x3 convolution of the finest (stride 4) gives the mask features.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ConvNorm(nn.Conv2d):
    """A convolution followed by an optional norm and ReLU (detectron2's ``Conv2d`` keys)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        norm: nn.Module | None = None,
        relu: bool = False,
    ) -> None:
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            padding=kernel_size // 2,
            bias=norm is None,
        )
        self.norm = norm
        self.relu = relu

    def forward(self, x: Tensor) -> Tensor:
        """Convolve, normalise, activate."""
        x = super().forward(x)
        if self.norm is not None:
            x = self.norm(x)
        return F.relu(x) if self.relu else x


def sine_position(x: Tensor, num_feats: int, temperature: float = 10000.0) -> Tensor:
    """DETR's normalised sine positions of a feature map.

    Args:
        x: Features ``[B, C, H, W]`` (only the shape, dtype and device are used).
        num_feats: Channels per axis (the result has ``2 * num_feats``).
        temperature: Frequency base.

    Returns:
        Positions ``[B, 2 * num_feats, H, W]``: the ``y`` half then the ``x`` half.
    """
    b, _, h, w = x.shape
    eps, scale = 1e-6, 2 * math.pi
    y = torch.arange(1, h + 1, dtype=x.dtype, device=x.device)
    xs = torch.arange(1, w + 1, dtype=x.dtype, device=x.device)
    y = (y / (h + eps) * scale)[:, None].expand(h, w)
    xs = (xs / (w + eps) * scale)[None, :].expand(h, w)
    dim_t = torch.arange(num_feats, dtype=x.dtype, device=x.device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_feats)

    def encode(v: Tensor) -> Tensor:
        p = v[..., None] / dim_t
        return torch.stack((p[..., 0::2].sin(), p[..., 1::2].cos()), dim=-1).flatten(-2)

    pos = torch.cat((encode(y), encode(xs)), dim=-1).permute(2, 0, 1)
    return pos[None].expand(b, -1, -1, -1)


class TransformerEncoderLayer(nn.Module):
    """DETR's post-norm encoder layer (self-attention with positions added to queries and keys)."""

    def __init__(self, dim: int, heads: int, ffn_dim: int) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads)
        self.linear1 = nn.Linear(dim, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, src: Tensor, pos: Tensor) -> Tensor:
        """Encode tokens ``[L, B, C]`` with positions ``[L, B, C]``."""
        q = src + pos
        src = self.norm1(src + self.self_attn(q, q, value=src, need_weights=False)[0])
        return self.norm2(src + self.linear2(F.relu(self.linear1(src))))


class TransformerEncoder(nn.Module):
    """A stack of encoder layers (``layers.N``)."""

    def __init__(self, dim: int, heads: int, ffn_dim: int, num_layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            TransformerEncoderLayer(dim, heads, ffn_dim) for _ in range(num_layers)
        )

    def forward(self, src: Tensor, pos: Tensor) -> Tensor:
        """Encode tokens ``[L, B, C]``."""
        for layer in self.layers:
            src = layer(src, pos)
        return src


class TransformerEncoderOnly(nn.Module):
    """The encoder on a feature map ``[B, C, H, W]`` (kept under ``transformer.encoder``)."""

    def __init__(self, dim: int, heads: int, ffn_dim: int, num_layers: int) -> None:
        super().__init__()
        self.encoder = TransformerEncoder(dim, heads, ffn_dim, num_layers)

    def forward(self, x: Tensor, pos: Tensor) -> Tensor:
        """Encode a map ``[B, C, H, W]`` with positions of the same shape."""
        b, c, h, w = x.shape
        out = self.encoder(x.flatten(2).permute(2, 0, 1), pos.flatten(2).permute(2, 0, 1))
        return out.permute(1, 2, 0).reshape(b, c, h, w)


class TransformerEncoderPixelDecoder(nn.Module):
    """FPN + transformer encoder pixel decoder.

    Args:
        in_channels: Channels of the backbone features from the finest (``res2``) to the
            coarsest (``res5``).
        conv_dim: Width of the FPN and of the transformer encoder.
        mask_dim: Channels of the mask features.
        num_layers: Transformer encoder layers.
        heads: Attention heads.
        ffn_dim: Hidden width of the encoder's feed-forward blocks.
        groups: GroupNorm groups.
    """

    #: levels handed to the mask decoder (coarsest first)
    num_feature_levels = 3

    def __init__(
        self,
        in_channels: tuple[int, ...] = (192, 384, 768, 1536),
        conv_dim: int = 512,
        mask_dim: int = 512,
        num_layers: int = 6,
        heads: int = 8,
        ffn_dim: int = 2048,
        groups: int = 32,
    ) -> None:
        super().__init__()
        if len(in_channels) < 2 or conv_dim % groups or conv_dim % heads:
            msg = (
                f"need >= 2 input levels and conv_dim ({conv_dim}) divisible by groups ({groups}) "
                f"and heads ({heads}), got in_channels {in_channels}"
            )
            raise ValueError(msg)
        self.levels = len(in_channels)
        # registration order follows the official state dict
        for i, c in enumerate(in_channels[:-1], start=1):
            adapter = ConvNorm(c, conv_dim, 1, nn.GroupNorm(groups, conv_dim))
            self.add_module(f"adapter_{i}", adapter)
            layer = ConvNorm(conv_dim, conv_dim, 3, nn.GroupNorm(groups, conv_dim), relu=True)
            self.add_module(f"layer_{i}", layer)
        self.mask_features = nn.Conv2d(conv_dim, mask_dim, 3, padding=1)
        self.input_proj = nn.Conv2d(in_channels[-1], conv_dim, 1)
        self.transformer = TransformerEncoderOnly(conv_dim, heads, ffn_dim, num_layers)
        last = ConvNorm(conv_dim, conv_dim, 3, nn.GroupNorm(groups, conv_dim), relu=True)
        self.add_module(f"layer_{self.levels}", last)

    def forward(self, features: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        """Decode backbone features.

        Args:
            features: ``[B, C_i, H_i, W_i]`` from the finest to the coarsest.

        Returns:
            Mask features ``[B, mask_dim, H_0, W_0]`` and the three coarsest FPN outputs
            ``[B, conv_dim, H_i, W_i]``, coarsest first.
        """
        x = self.input_proj(features[-1])
        x = self.transformer(x, sine_position(x, x.shape[1] // 2))
        y = getattr(self, f"layer_{self.levels}")(x)
        multi_scale = [y]
        for i in range(self.levels - 1, 0, -1):
            lateral = getattr(self, f"adapter_{i}")(features[i - 1])
            y = lateral + F.interpolate(y, size=lateral.shape[-2:], mode="nearest")
            y = getattr(self, f"layer_{i}")(y)
            if len(multi_scale) < self.num_feature_levels:
                multi_scale.append(y)
        return self.mask_features(y), multi_scale
