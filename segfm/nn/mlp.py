"""The two MLPs of SAM: the transformer's feed-forward block and the decoder heads' MLP."""

from __future__ import annotations

from itertools import pairwise

import torch.nn.functional as F
from torch import Tensor, nn


class MLPBlock(nn.Module):
    """Feed-forward block ``lin2(act(lin1(x)))`` of a transformer layer.

    Args:
        embedding_dim: Input and output width.
        mlp_dim: Hidden width.
        act: Activation class, instantiated without arguments.
    """

    def __init__(self, embedding_dim: int, mlp_dim: int, act: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        if embedding_dim <= 0 or mlp_dim <= 0:
            msg = f"embedding_dim and mlp_dim must be positive, got {embedding_dim} and {mlp_dim}"
            raise ValueError(msg)
        self.lin1 = nn.Linear(embedding_dim, mlp_dim)
        self.lin2 = nn.Linear(mlp_dim, embedding_dim)
        self.act = act()

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block.

        Args:
            x: Tokens ``[..., embedding_dim]``.

        Returns:
            Tokens ``[..., embedding_dim]``.
        """
        return self.lin2(self.act(self.lin1(x)))


# Adapted from MaskFormer's MLP via SAM:
# https://github.com/facebookresearch/MaskFormer/blob/main/mask_former/modeling/transformer/transformer_predictor.py
class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU between them (SAM's hypernetwork and IoU heads).

    Args:
        input_dim: Input width.
        hidden_dim: Width of every hidden layer.
        output_dim: Output width.
        num_layers: Number of linear layers (``layers.0`` .. ``layers.{num_layers-1}``).
        sigmoid_output: Apply a sigmoid to the output.
    """

    def __init__(
        self,
        input_dim: int,
        hidden_dim: int,
        output_dim: int,
        num_layers: int,
        sigmoid_output: bool = False,
    ) -> None:
        super().__init__()
        if num_layers < 1:
            msg = f"num_layers must be >= 1, got {num_layers}"
            raise ValueError(msg)
        widths = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.num_layers = num_layers
        self.layers = nn.ModuleList(nn.Linear(n_in, n_out) for n_in, n_out in pairwise(widths))
        self.sigmoid_output = sigmoid_output

    def forward(self, x: Tensor) -> Tensor:
        """Apply the layers.

        Args:
            x: Input ``[..., input_dim]``.

        Returns:
            Output ``[..., output_dim]``.
        """
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < self.num_layers - 1:
                x = F.relu(x)
        return x.sigmoid() if self.sigmoid_output else x
