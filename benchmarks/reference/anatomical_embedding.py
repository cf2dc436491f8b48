"""Reference of the official SAM / SAM++ / Cross-SAM network forward, in plain torch.

A re-implementation (not a copy) of the network of
alibaba-damo-academy/self-supervised-anatomical-embedding-v2 @035bbfc, in the original's own
structure and parameter names, so that a state dict in the released (mmcv) layout loads into it
with ``strict=True``:

- ``sam/models/backbones/resnet3d.py``: ``ResNet3d`` (mmaction's, with the extra ``pool2``
  after ``layer1``), ``BasicBlock3d`` and ``make_res_layer`` (the downsample is a
  ``ConvModule`` handed to the first block, applied after ``conv2``);
- ``sam/models/necks/fpn3d.py``: ``FPN3d`` (1x1x1 laterals, in-place nearest top-down sums,
  one 3x3x3 convolution on the finest level, a tuple of outputs);
- ``sam/models/frameworks/sam.py`` (``Sam.extract_feat``) and
  ``sam/models/frameworks/sam_v2_uniform_cross_volume_mask_dual_head_*.py``
  (the SAM++ / Cross-SAM ``extract_feat`` with ``semantic_head``, a second copy of ``neck``):
  L2 normalisation of every output along the channels, then a cast to float16;
- mmcv 1.4.7's ``ConvModule`` (``conv``, ``bn``, ``activate`` in that order; no convolution
  bias when a norm follows) emulated by :class:`ConvModule` below;
- the network settings of ``configs/sam/sam_deeplesion.py`` (inherited by ``sam_NIHLN.py``)
  and ``configs/samv2/samv2_NIHLN.py``, in :func:`build_sam`.

Deliberate differences:

- ``half_outputs`` (default True, as the original) can switch the final float16 cast off, so
  that the outputs can be compared with float32 ones;
- only what those configs use is kept: basic blocks (depth 18 / 34), no non-local blocks, no
  checkpointing, no frozen stages, no extra FPN levels (asked for, they raise), no inflation of
  ImageNet weights (``init_weights`` is mmcv's random initialisation only);
- the original's GPU training wraps the forward in CUDA autocast (mmcv ``fp16`` config); this
  module runs in the caller's precision.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

IntOr3 = int | tuple[int, int, int]


def _triple(x: IntOr3) -> tuple[int, int, int]:
    return (x, x, x) if isinstance(x, int) else tuple(x)  # type: ignore[return-value]


class ConvModule(nn.Module):
    """mmcv's ``ConvModule`` for ``Conv3d`` / ``BN3d`` / ``ReLU``: conv, then norm, then act.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        kernel_size: Kernel (an int for a cube).
        stride: Stride.
        padding: Zero padding.
        dilation: Dilation.
        bias: ``"auto"`` (a bias only without norm, as mmcv) or a bool.
        with_norm: Add ``bn`` (mmcv names a ``BN3d`` layer ``bn``).
        with_act: Add a ReLU (``activate``).
        inplace: In-place ReLU (mmcv's default).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntOr3,
        stride: IntOr3 = 1,
        padding: IntOr3 = 0,
        dilation: IntOr3 = 1,
        bias: bool | str = "auto",
        with_norm: bool = False,
        with_act: bool = False,
        inplace: bool = True,
    ) -> None:
        super().__init__()
        if bias == "auto":
            bias = not with_norm
        self.conv = nn.Conv3d(
            in_channels,
            out_channels,
            _triple(kernel_size),
            stride=_triple(stride),
            padding=_triple(padding),
            dilation=_triple(dilation),
            bias=bool(bias),
        )
        self.with_norm = with_norm
        self.with_activation = with_act
        if with_norm:
            self.bn = nn.BatchNorm3d(out_channels)
        if with_act:
            self.activate = nn.ReLU(inplace=inplace)

    def forward(self, x: Tensor) -> Tensor:
        """Conv, norm, act."""
        x = self.conv(x)
        if self.with_norm:
            x = self.bn(x)
        if self.with_activation:
            x = self.activate(x)
        return x


class BasicBlock3d(nn.Module):
    """``BasicBlock3d`` of the original: two convolutions, shortcut added before the last ReLU.

    Args:
        inplanes: Input channels.
        planes: Output channels.
        spatial_stride: Stride of ``conv1`` along y and x.
        temporal_stride: Stride of ``conv1`` along z.
        dilation: In-plane dilation of ``conv1``.
        downsample: The shortcut projection, or None for the identity.
        inflate: 3x3x3 kernels (True) or 1x3x3 (False).
    """

    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        spatial_stride: int = 1,
        temporal_stride: int = 1,
        dilation: int = 1,
        downsample: nn.Module | None = None,
        inflate: bool = True,
    ) -> None:
        super().__init__()
        if inflate:
            k1, p1, k2, p2 = (3, 3, 3), (1, dilation, dilation), (3, 3, 3), (1, 1, 1)
        else:
            k1, p1, k2, p2 = (1, 3, 3), (0, dilation, dilation), (1, 3, 3), (0, 1, 1)
        self.conv1 = ConvModule(
            inplanes,
            planes,
            k1,
            stride=(temporal_stride, spatial_stride, spatial_stride),
            padding=p1,
            dilation=(1, dilation, dilation),
            bias=False,
            with_norm=True,
            with_act=True,
        )
        self.conv2 = ConvModule(
            planes, planes * self.expansion, k2, padding=p2, bias=False, with_norm=True
        )
        self.downsample = downsample
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        """Residual block."""
        identity = x
        out = self.conv2(self.conv1(x))
        if self.downsample is not None:
            identity = self.downsample(x)
        return self.relu(out + identity)


class ResNet3d(nn.Module):
    """The original's ``ResNet3d`` (basic blocks only).

    Args:
        depth: 18 or 34.
        in_channels: Image channels.
        base_channels: Channels of the stem and ``layer1``.
        out_indices: Stages whose outputs are returned.
        spatial_strides: y/x stride of each stage's first block.
        temporal_strides: z stride of each stage's first block.
        conv1_kernel: Stem kernel.
        conv1_stride_s: Stem y/x stride.
        conv1_stride_t: Stem z stride.
        pool1_stride_s: y/x stride of the stem pooling.
        pool1_stride_t: z stride of the stem pooling.
        with_pool1: Apply the stem pooling.
        with_pool2: Apply the ``(2, 1, 1)`` max-pool after ``layer1``.
        inflate: Per stage, per block: 1 for 3x3x3 kernels, 0 for 1x3x3.
    """

    arch_settings: dict[int, tuple[type[BasicBlock3d], tuple[int, ...]]] = {  # noqa: RUF012
        18: (BasicBlock3d, (2, 2, 2, 2)),
        34: (BasicBlock3d, (3, 4, 6, 3)),
    }

    def __init__(
        self,
        depth: int = 18,
        in_channels: int = 3,
        base_channels: int = 64,
        out_indices: Sequence[int] = (0, 1, 2, 3),
        spatial_strides: Sequence[int] = (1, 2, 2, 2),
        temporal_strides: Sequence[int] = (1, 1, 1, 1),
        conv1_kernel: tuple[int, int, int] = (3, 7, 7),
        conv1_stride_s: int = 2,
        conv1_stride_t: int = 1,
        pool1_stride_s: int = 2,
        pool1_stride_t: int = 1,
        with_pool1: bool = True,
        with_pool2: bool = True,
        inflate: Sequence[int | Sequence[int]] = (1, 1, 1, 1),
    ) -> None:
        super().__init__()
        if depth not in self.arch_settings:
            msg = f"the reference keeps basic-block depths only (18, 34), got {depth}"
            raise KeyError(msg)
        self.out_indices = tuple(out_indices)
        self.with_pool1 = with_pool1
        self.with_pool2 = with_pool2
        block, stage_blocks = self.arch_settings[depth]
        self.conv1 = ConvModule(
            in_channels,
            base_channels,
            conv1_kernel,
            stride=(conv1_stride_t, conv1_stride_s, conv1_stride_s),
            padding=tuple((k - 1) // 2 for k in conv1_kernel),  # type: ignore[arg-type]
            bias=False,
            with_norm=True,
            with_act=True,
        )
        self.maxpool = nn.MaxPool3d(
            (1, 3, 3), stride=(pool1_stride_t, pool1_stride_s, pool1_stride_s), padding=(0, 1, 1)
        )
        self.pool2 = nn.MaxPool3d((2, 1, 1), stride=(2, 1, 1))
        self.res_layers: list[str] = []
        inplanes = base_channels
        for i, blocks in enumerate(stage_blocks):
            planes = base_channels * 2**i
            layer = self.make_res_layer(
                block,
                inplanes,
                planes,
                blocks,
                spatial_strides[i],
                temporal_strides[i],
                inflate[i],
            )
            inplanes = planes * block.expansion
            self.add_module(f"layer{i + 1}", layer)
            self.res_layers.append(f"layer{i + 1}")
        self.init_weights()

    @staticmethod
    def make_res_layer(
        block: type[BasicBlock3d],
        inplanes: int,
        planes: int,
        blocks: int,
        spatial_stride: int = 1,
        temporal_stride: int = 1,
        inflate: int | Sequence[int] = 1,
    ) -> nn.Sequential:
        """One stage; the first block strides and carries the projection shortcut."""
        flags = (inflate,) * blocks if isinstance(inflate, int) else tuple(inflate)
        if len(flags) != blocks:
            msg = f"inflate has {len(flags)} flags for {blocks} blocks"
            raise ValueError(msg)
        downsample = None
        # as the original: a temporal-only stride keeps the identity shortcut
        if spatial_stride != 1 or inplanes != planes * block.expansion:
            downsample = ConvModule(
                inplanes,
                planes * block.expansion,
                1,
                stride=(temporal_stride, spatial_stride, spatial_stride),
                bias=False,
                with_norm=True,
            )
        layers = [
            block(
                inplanes,
                planes,
                spatial_stride,
                temporal_stride,
                downsample=downsample,
                inflate=flags[0] == 1,
            )
        ]
        inplanes = planes * block.expansion
        layers += [block(inplanes, planes, inflate=flags[i] == 1) for i in range(1, blocks)]
        return nn.Sequential(*layers)

    def init_weights(self) -> None:
        """mmcv's ``kaiming_init`` of convolutions, ``constant_init(1)`` of batch norms."""
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, ...]:
        """Stem, the four stages (``pool2`` after the first), the outputs of ``out_indices``."""
        x = self.conv1(x)
        if self.with_pool1:
            x = self.maxpool(x)
        outs = []
        for i, name in enumerate(self.res_layers):
            x = getattr(self, name)(x)
            if i == 0 and self.with_pool2:
                x = self.pool2(x)
            if i in self.out_indices:
                outs.append(x)
        return outs[0] if len(outs) == 1 else tuple(outs)


class FPN3d(nn.Module):
    """The original's ``FPN3d`` without extra levels (no norm, no activation).

    Args:
        in_channels: Channels of the backbone levels.
        out_channels: Channels of the output.
        num_outs: Outputs asked for; more than the levels used is not supported here.
        start_level: First backbone level used.
        end_level: Last level used, exclusive (-1: all).
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        out_channels: int,
        num_outs: int,
        start_level: int = 0,
        end_level: int = -1,
    ) -> None:
        super().__init__()
        self.in_channels = list(in_channels)
        self.out_channels = out_channels
        self.num_outs = num_outs
        self.start_level = start_level
        self.end_level = end_level
        self.backbone_end_level = len(in_channels) if end_level == -1 else end_level
        if num_outs != self.backbone_end_level - start_level:
            msg = "the reference FPN3d builds no extra levels: num_outs must equal the levels used"
            raise NotImplementedError(msg)
        self.lateral_convs = nn.ModuleList(
            ConvModule(in_channels[i], out_channels, 1, inplace=False)
            for i in range(start_level, self.backbone_end_level)
        )
        self.fpn_convs = nn.ModuleList(
            [ConvModule(out_channels, out_channels, 3, padding=1, inplace=False)]
        )
        for m in self.modules():
            if isinstance(m, nn.Conv3d):  # the init_cfg: Xavier uniform, zero bias
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, inputs: Sequence[Tensor]) -> tuple[Tensor, ...]:
        """Laterals, in-place nearest top-down sums, one convolution on the finest level."""
        if len(inputs) != len(self.in_channels):
            msg = f"FPN3d takes {len(self.in_channels)} inputs, got {len(inputs)}"
            raise ValueError(msg)
        laterals = [conv(inputs[i + self.start_level]) for i, conv in enumerate(self.lateral_convs)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] += F.interpolate(
                laterals[i], size=laterals[i - 1].shape[2:], mode="nearest"
            )
        return (self.fpn_convs[0](laterals[0]),)


class Sam(nn.Module):
    """``Sam`` (and, with ``semantic_head``, the SAM++ / Cross-SAM frameworks): the network only.

    Args:
        backbone: The ResNet3d.
        neck: Local head over the first ``neck.end_level`` stages.
        read_out_head: Global head over the last stage.
        semantic_head: SAM++ / Cross-SAM second local head, or None (SAM).
        half_outputs: Cast the embeddings to float16 at the end, as the original.
    """

    def __init__(
        self,
        backbone: ResNet3d,
        neck: FPN3d,
        read_out_head: FPN3d,
        semantic_head: FPN3d | None = None,
        half_outputs: bool = True,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.neck = neck
        self.read_out_head = read_out_head
        if semantic_head is not None:
            self.semantic_head = semantic_head
        self.half_outputs = half_outputs

    def extract_feat(self, img: Tensor, normalize: bool = True) -> list[Tensor]:
        """``[fine, coarse]`` (SAM) or ``[fine, coarse, semantic]`` (SAM++ / Cross-SAM)."""
        x = self.backbone(img)
        heads = [(self.neck, x[: self.neck.end_level]), (self.read_out_head, [x[-1]])]
        if hasattr(self, "semantic_head"):
            heads.append((self.semantic_head, x[: self.semantic_head.end_level]))
        outs = [head(feats)[0] for head, feats in heads]
        if normalize:
            outs = [F.normalize(o, dim=1) for o in outs]
        if self.half_outputs:
            outs = [o.type(torch.half) for o in outs]
        return outs

    def forward(self, img: Tensor) -> list[Tensor]:
        """``forward_dummy``: the embeddings of ``[N, 1, Z, Y, X]`` images."""
        return self.extract_feat(img)


def build_sam(
    semantic: bool = False,
    base_channels: int = 64,
    out_channels: int = 128,
    half_outputs: bool = True,
) -> Sam:
    """The network of ``configs/sam/sam_deeplesion.py`` (``semantic``: ``samv2_NIHLN.py``).

    Args:
        semantic: Add ``semantic_head`` (SAM++ / Cross-SAM: ``sem_neck`` unset, a copy of neck).
        base_channels: Backbone width (64 released; smaller for tests).
        out_channels: Embedding channels (128 released).
        half_outputs: Cast the outputs to float16 as the original.

    Returns:
        The network, randomly initialised.
    """
    backbone = ResNet3d(
        depth=18,
        in_channels=1,
        base_channels=base_channels,
        spatial_strides=(2, 2, 2, 2),
        temporal_strides=(1, 1, 1, 2),
        conv1_kernel=(3, 7, 7),
        conv1_stride_s=1,
        conv1_stride_t=1,
        pool1_stride_t=1,
        with_pool1=False,
        with_pool2=True,
        inflate=((0, 0), (0, 0), (1, 1), (1, 1)),
    )
    fine_in = [base_channels, base_channels * 2, base_channels * 4]

    def neck() -> FPN3d:
        return FPN3d(fine_in, out_channels, num_outs=3, end_level=3)

    return Sam(
        backbone,
        neck(),
        FPN3d([base_channels * 8], out_channels, num_outs=1, end_level=1),
        semantic_head=neck() if semantic else None,
        half_outputs=half_outputs,
    )
