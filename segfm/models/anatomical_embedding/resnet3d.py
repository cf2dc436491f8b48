"""ResNet3d-18 backbone of SAM / SAM++ / Cross-SAM with the released checkpoints' key names.

The network follows ``sam/models/backbones/resnet3d.py`` of
alibaba-damo-academy/self-supervised-anatomical-embedding-v2 (mmaction's ResNet3d) as configured
by ``configs/sam/*.py``: no stem pooling, a ``(2, 1, 1)`` max-pool after ``layer1``, stage
strides ``(1, 2, 2) x 3`` and ``(2, 2, 2)``, ``1x3x3`` kernels in ``layer1``/``layer2`` and
``3x3x3`` in ``layer3``/``layer4``. Cumulative strides ``(z, y, x)``: ``layer1`` 2x2x2,
``layer2`` 2x4x4, ``layer3`` 2x8x8, ``layer4`` 4x16x16. Each convolution is wrapped as mmcv's
``ConvModule`` (``<name>.conv`` + ``<name>.bn``), so the parameters are named as in the
released files (``backbone.layer3.0.conv1.conv.weight``, ``backbone.layer1.0.downsample.bn.
running_mean`` ...).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

Triple = tuple[int, int, int]


class ConvModule(nn.Module):
    """Convolution, optional batch norm and optional ReLU, named as mmcv's ``ConvModule``.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        kernel_size: Kernel ``(z, y, x)``.
        stride: Stride ``(z, y, x)``.
        padding: Padding ``(z, y, x)``.
        norm: Add ``bn`` (BatchNorm3d); the convolution then has no bias, as mmcv's ``auto``.
        act: Apply ReLU at the end.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: Triple,
        stride: Triple = (1, 1, 1),
        padding: Triple = (0, 0, 0),
        norm: bool = True,
        act: bool = True,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv3d(
            in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=not norm
        )
        self.bn = nn.BatchNorm3d(out_channels) if norm else None
        self.act = nn.ReLU(inplace=True) if act else None

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C_in, *S]`` to ``[B, C_out, *S / stride]``."""
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return x if self.act is None else self.act(x)


class BasicBlock3d(nn.Module):
    """ResNet basic block: two convolutions and a (projected) shortcut.

    Args:
        inplanes: Input channels.
        planes: Output channels.
        stride: Stride of the first convolution ``(z, y, x)``.
        inflate: ``3x3x3`` kernels (True) or ``1x3x3`` (False).
    """

    def __init__(self, inplanes: int, planes: int, stride: Triple, inflate: bool) -> None:
        super().__init__()
        kernel = (3, 3, 3) if inflate else (1, 3, 3)
        pad = (1, 1, 1) if inflate else (0, 1, 1)
        self.conv1 = ConvModule(inplanes, planes, kernel, stride, pad)
        self.conv2 = ConvModule(planes, planes, kernel, (1, 1, 1), pad, act=False)
        self.downsample: ConvModule | None = None
        if stride != (1, 1, 1) or inplanes != planes:
            self.downsample = ConvModule(inplanes, planes, (1, 1, 1), stride, act=False)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, inplanes, *S]`` to ``[B, planes, *S / stride]``."""
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(self.conv2(self.conv1(x)) + identity)


class ResNet3d(nn.Module):
    """ResNet3d with four stages, returning every stage's features.

    Args:
        in_channels: Image channels (1).
        base_channels: Channels of the stem and ``layer1``; doubled at each stage (64 released).
        stage_blocks: Blocks per stage (``(2, 2, 2, 2)``: ResNet-18).
        strides: Stride ``(z, y, x)`` of each stage's first block.
        inflate: Per stage, ``3x3x3`` kernels (True) or ``1x3x3`` (False).
        stem_kernel: Kernel of the stem convolution ``(z, y, x)`` (stride 1, no pooling).
    """

    def __init__(
        self,
        in_channels: int = 1,
        base_channels: int = 64,
        stage_blocks: Sequence[int] = (2, 2, 2, 2),
        strides: Sequence[Triple] = ((1, 2, 2), (1, 2, 2), (1, 2, 2), (2, 2, 2)),
        inflate: Sequence[bool] = (False, False, True, True),
        stem_kernel: Triple = (3, 7, 7),
    ) -> None:
        super().__init__()
        if not len(stage_blocks) == len(strides) == len(inflate) == 4:
            msg = (
                f"ResNet3d needs 4 stages, got stage_blocks={tuple(stage_blocks)}, "
                f"strides={tuple(strides)}, inflate={tuple(inflate)}"
            )
            raise ValueError(msg)
        if base_channels < 1 or in_channels < 1:
            msg = f"channels must be >= 1, got in={in_channels}, base={base_channels}"
            raise ValueError(msg)
        pad = tuple((k - 1) // 2 for k in stem_kernel)
        self.conv1 = ConvModule(in_channels, base_channels, stem_kernel, padding=pad)  # type: ignore[arg-type]
        self.pool2 = nn.MaxPool3d(kernel_size=(2, 1, 1), stride=(2, 1, 1))
        self.out_channels: list[int] = []
        inplanes = base_channels
        for i, (blocks, stride, inf) in enumerate(zip(stage_blocks, strides, inflate, strict=True)):
            planes = base_channels * 2**i
            layers = [BasicBlock3d(inplanes, planes, tuple(stride), inf)]  # type: ignore[arg-type]
            layers += [BasicBlock3d(planes, planes, (1, 1, 1), inf) for _ in range(blocks - 1)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*layers))
            self.out_channels.append(planes)
            inplanes = planes
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-normal convolutions, unit batch norms (the original's ``init_weights``)."""
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``[B, 1, D, H, W]`` to the four stage outputs (strides 2x2x2 ... 4x16x16)."""
        x = self.conv1(x)
        outs = []
        for i in range(4):
            x = getattr(self, f"layer{i + 1}")(x)
            if i == 0:
                x = self.pool2(x)
            outs.append(x)
        return outs[0], outs[1], outs[2], outs[3]
