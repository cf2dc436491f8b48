"""FocalNet backbone of BiomedParse v2 (focal modulation instead of self-attention).

FocalNet: Yang et al., "Focal Modulation Networks", NeurIPS 2022; the layout (names, post-norm
blocks, layer scale, overlapping convolutional patch embedding) is BiomedParse's ``D2FocalNet``
(microsoft/BiomedParse v2, ``src/model/backbone/focal.py``). It returns the features of the four
stages, normalised, as ``res2`` (stride 4) .. ``res5`` (stride 32).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Mlp(nn.Module):
    """Feed-forward block ``fc2(gelu(fc1(x)))``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block to tokens ``[..., dim]``."""
        return self.fc2(self.act(self.fc1(x)))


class FocalModulation(nn.Module):
    """Focal modulation: gated depth-wise context at ``focal_level`` scales plus a global one.

    Args:
        dim: Channels.
        focal_level: Number of depth-wise convolution levels.
        focal_window: Kernel size of the first level (each next level adds 2).
        scaling_modulator: Divide the aggregated context by ``focal_level + 1``.
    """

    def __init__(
        self, dim: int, focal_level: int, focal_window: int, scaling_modulator: bool = True
    ) -> None:
        super().__init__()
        self.focal_level = focal_level
        self.scaling_modulator = scaling_modulator
        self.f = nn.Linear(dim, 2 * dim + focal_level + 1)
        self.h = nn.Conv2d(dim, dim, kernel_size=1)
        self.act = nn.GELU()
        self.proj = nn.Linear(dim, dim)
        self.focal_layers = nn.ModuleList()
        for k in range(focal_level):
            size = 2 * k + focal_window
            conv = nn.Conv2d(dim, dim, size, padding=size // 2, groups=dim, bias=False)
            self.focal_layers.append(nn.Sequential(conv, nn.GELU()))

    def forward(self, x: Tensor) -> Tensor:
        """Modulate tokens ``[B, H, W, C]`` (returned in the same shape)."""
        c = x.shape[-1]
        x = self.f(x).permute(0, 3, 1, 2)
        q, ctx, gates = torch.split(x, (c, c, self.focal_level + 1), 1)
        ctx_all = torch.zeros_like(q)
        for level, layer in enumerate(self.focal_layers):
            ctx = layer(ctx)
            ctx_all = ctx_all + ctx * gates[:, level : level + 1]
        ctx_global = self.act(ctx.mean((2, 3), keepdim=True))
        ctx_all = ctx_all + ctx_global * gates[:, self.focal_level :]
        if self.scaling_modulator:
            ctx_all = ctx_all / (self.focal_level + 1)
        out = (q * self.h(ctx_all)).permute(0, 2, 3, 1)
        return self.proj(out)


class FocalModulationBlock(nn.Module):
    """Post-norm block with layer scale: ``x + g1 * norm1(FM(x))``, then ``+ g2 * norm2(MLP)``."""

    def __init__(
        self, dim: int, focal_level: int, focal_window: int, mlp_ratio: float = 4.0
    ) -> None:
        super().__init__()
        self.gamma_1 = nn.Parameter(1e-4 * torch.ones(dim))
        self.gamma_2 = nn.Parameter(1e-4 * torch.ones(dim))
        self.norm1 = nn.LayerNorm(dim)
        self.modulation = FocalModulation(dim, focal_level, focal_window)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        """Apply the block to tokens ``[B, H*W, C]`` of a ``size = (H, W)`` grid."""
        b, n, c = x.shape
        y = self.modulation(x.view(b, *size, c)).view(b, n, c)
        x = x + self.gamma_1 * self.norm1(y)
        return x + self.gamma_2 * self.norm2(self.mlp(x))


class PatchEmbed(nn.Module):
    """Overlapping convolutional patch embedding with LayerNorm.

    Args:
        in_chans: Input channels.
        embed_dim: Output channels.
        stem: The stem (7x7, stride 4) rather than a stage transition (3x3, stride 2).
    """

    def __init__(self, in_chans: int, embed_dim: int, stem: bool) -> None:
        super().__init__()
        kernel, stride, padding = (7, 4, 2) if stem else (3, 2, 1)
        self.stride = stride
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel, stride=stride, padding=padding)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        """Embed ``[B, C, H, W]`` into ``[B, D, H', W']`` (padded to a multiple of the stride)."""
        h, w = x.shape[-2:]
        x = F.pad(x, (0, -w % self.stride, 0, -h % self.stride))
        x = self.proj(x)
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class BasicLayer(nn.Module):
    """One stage: ``depth`` blocks, then (except the last stage) a downsampling embedding."""

    def __init__(
        self, dim: int, depth: int, focal_level: int, focal_window: int, downsample: bool
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            FocalModulationBlock(dim, focal_level, focal_window) for _ in range(depth)
        )
        self.downsample = PatchEmbed(dim, 2 * dim, stem=False) if downsample else None

    def forward(self, x: Tensor, size: tuple[int, int]) -> tuple[Tensor, Tensor, tuple[int, int]]:
        """Tokens ``[B, H*W, C]`` to (stage output, next stage input, next grid size)."""
        for block in self.blocks:
            x = block(x, size)
        if self.downsample is None:
            return x, x, size
        grid = x.transpose(1, 2).reshape(x.shape[0], x.shape[-1], *size)
        down = self.downsample(grid)
        return x, down.flatten(2).transpose(1, 2), (down.shape[-2], down.shape[-1])


class FocalNet(nn.Module):
    """FocalNet feature extractor.

    Args:
        embed_dim: Channels of the first stage (doubled at each next stage).
        depths: Blocks per stage.
        focal_levels: Focal levels per stage.
        focal_windows: First focal kernel size per stage.
        in_chans: Input channels.
    """

    def __init__(
        self,
        embed_dim: int = 192,
        depths: Sequence[int] = (2, 2, 18, 2),
        focal_levels: Sequence[int] = (4, 4, 4, 4),
        focal_windows: Sequence[int] = (3, 3, 3, 3),
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        if embed_dim <= 0 or not depths or min(depths) < 1:
            msg = f"embed_dim must be positive and depths >= 1, got {embed_dim} and {depths}"
            raise ValueError(msg)
        if not len(depths) == len(focal_levels) == len(focal_windows):
            msg = f"depths {depths}, focal_levels and focal_windows need one entry per stage"
            raise ValueError(msg)
        self.patch_embed = PatchEmbed(in_chans, embed_dim, stem=True)
        stages = len(depths)
        self.num_features = [embed_dim * 2**i for i in range(stages)]
        self.layers = nn.ModuleList(
            BasicLayer(
                self.num_features[i], depths[i], focal_levels[i], focal_windows[i], i < stages - 1
            )
            for i in range(stages)
        )
        for i, width in enumerate(self.num_features):
            self.add_module(f"norm{i}", nn.LayerNorm(width))

    def output_channels(self) -> dict[str, int]:
        """Channels of each output feature (``res2`` ..)."""
        return {f"res{i + 2}": c for i, c in enumerate(self.num_features)}

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Features of an image batch.

        Args:
            x: Normalised images ``[B, 3, H, W]``.

        Returns:
            ``res2`` .. ``res5``: ``[B, C_i, H / 2^(i+2), W / 2^(i+2)]``.
        """
        x = self.patch_embed(x)
        size = (x.shape[-2], x.shape[-1])
        x = x.flatten(2).transpose(1, 2)
        outs = {}
        for i, layer in enumerate(self.layers):
            out, x, next_size = layer(x, size)
            out = getattr(self, f"norm{i}")(out)
            outs[f"res{i + 2}"] = out.transpose(1, 2).reshape(out.shape[0], -1, *size)
            size = next_size
        return outs
