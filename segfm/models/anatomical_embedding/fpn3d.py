"""FPN3d: the local (``neck``), global (``read_out_head``) and semantic heads.

As ``sam/models/necks/fpn3d.py`` of the original with ``norm_cfg=None`` and ``act_cfg=None``:
``1x1x1`` lateral convolutions (with bias) to ``out_channels``, a nearest-neighbour top-down
path, and a single ``3x3x3`` convolution on the finest level; only that level is returned.
Parameter names: ``lateral_convs.<i>.conv.{weight,bias}``, ``fpn_convs.0.conv.{weight,bias}``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from segfm.models.anatomical_embedding.resnet3d import ConvModule


class FPN3d(nn.Module):
    """A feature pyramid head returning one map at the stride of its first input.

    Args:
        in_channels: Channels of the inputs, finest first.
        out_channels: Channels of the output (128 released).
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int) -> None:
        super().__init__()
        if not in_channels or out_channels < 1:
            msg = f"FPN3d needs inputs and out_channels >= 1, got {in_channels}, {out_channels}"
            raise ValueError(msg)
        self.in_channels = list(in_channels)
        self.lateral_convs = nn.ModuleList(
            ConvModule(c, out_channels, (1, 1, 1), norm=False, act=False) for c in in_channels
        )
        self.fpn_convs = nn.ModuleList(
            [
                ConvModule(
                    out_channels, out_channels, (3, 3, 3), padding=(1, 1, 1), norm=False, act=False
                )
            ]
        )
        for m in self.modules():
            if isinstance(m, nn.Conv3d):  # mmdet's FPN init: Xavier uniform, zero bias
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, inputs: Sequence[Tensor]) -> Tensor:
        """Features ``[B, C_i, *S_i]`` (finest first) to ``[B, out_channels, *S_0]``."""
        if len(inputs) != len(self.lateral_convs):
            msg = f"FPN3d takes {len(self.lateral_convs)} inputs, got {len(inputs)}"
            raise ValueError(msg)
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, inputs, strict=True)]
        for i in range(len(laterals) - 1, 0, -1):
            up = F.interpolate(laterals[i], size=laterals[i - 1].shape[2:], mode="nearest")
            laterals[i - 1] = laterals[i - 1] + up
        return self.fpn_convs[0](laterals[0])
