"""Layer normalisation over the channel axis of channels-first tensors of any dimension."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


# Channels-first LayerNorm of SAM's `LayerNorm2d`, which cites
# https://github.com/facebookresearch/ConvNeXt/blob/d1fa8f6fef0a165b27399986cc2bdacc92777e40/models/convnext.py#L119
class LayerNormNd(nn.Module):
    """LayerNorm over the channels of ``[B, C, *S]`` for any number of spatial axes.

    Parameters are ``weight`` and ``bias`` of shape ``[C]``, the names of SAM's ``LayerNorm2d``
    and SAM-Med3D's ``LayerNorm3d``, so their checkpoints load unchanged.

    Args:
        num_channels: Number of channels ``C``.
        eps: Added to the variance before the square root.
    """

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        if num_channels <= 0:
            msg = f"num_channels must be positive, got {num_channels}"
            raise ValueError(msg)
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        """Normalise each position's channel vector.

        Args:
            x: Input ``[B, C, *S]``.

        Returns:
            Normalised, scaled and shifted tensor ``[B, C, *S]``.
        """
        # [B, C, *S] -> [B, *S, C] for F.layer_norm, then back.
        y = F.layer_norm(x.movedim(1, -1), (x.shape[1],), self.weight, self.bias, self.eps)
        return y.movedim(-1, 1)

    def extra_repr(self) -> str:
        """Channels and epsilon."""
        return f"{self.weight.shape[0]}, eps={self.eps}"


class LayerNorm2d(LayerNormNd):
    """:class:`LayerNormNd` under the name SAM uses for ``[B, C, H, W]`` inputs."""


class LayerNorm3d(LayerNormNd):
    """:class:`LayerNormNd` under the name SAM-Med3D uses for ``[B, C, D, H, W]`` inputs."""
