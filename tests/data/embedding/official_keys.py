"""Write ``official_keys.txt``: the released SAM++ / Cross-SAM state-dict keys and shapes.

Derived by hand from the official source (alibaba-damo-academy/self-supervised-anatomical-
embedding-v2 @ 035bbfc), independently of segfm's network code:

- ``configs/samv2/samv2_NIHLN.py``: ResNet3d depth 18, ``in_channels=1``, ``inflate=((0, 0),
  (0, 0), (1, 1), (1, 1))``, ``spatial_strides=(2, 2, 2, 2)``, ``temporal_strides=(1, 1, 1, 2)``,
  ``conv1_kernel=(3, 7, 7)``; ``neck`` FPN3d ``in_channels=[64, 128, 256]``, ``read_out_head``
  FPN3d ``in_channels=[512]``, both ``out_channels=128``, no ``norm_cfg``.
- ``sam/models/backbones/resnet3d.py``: every convolution is an mmcv ``ConvModule`` (``.conv``,
  ``.bn`` for ``norm_cfg=BN3d``, conv bias off when normed); ``make_res_layer`` adds
  ``downsample`` (1x1x1 ConvModule) to the first block when the stride is not 1, which is every
  stage here; ``inflate=0`` gives ``1x3x3`` kernels, ``1`` gives ``3x3x3``.
- ``sam/models/necks/fpn3d.py``: ``lateral_convs`` (1x1x1) per input and one ``fpn_convs``
  (3x3x3), ConvModules without norm, hence with bias.
- ``sam/models/frameworks/sam_v2_*.py``: ``semantic_head = build_neck(neck)`` (same shapes).

``SAM.pth`` (``sam/models/frameworks/sam.py``) has the same keys without ``semantic_head.*``.
Run ``python -m tests.data.embedding.official_keys`` to rewrite the file.
"""

from __future__ import annotations

from pathlib import Path

BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _conv_bn(
    name: str, out: int, inp: int, kernel: tuple[int, ...]
) -> list[tuple[str, tuple[int, ...]]]:
    rows = [(f"{name}.conv.weight", (out, inp, *kernel))]
    rows += [(f"{name}.bn.{p}", () if p == "num_batches_tracked" else (out,)) for p in BN]
    return rows


def _fpn(prefix: str, ins: list[int], out: int = 128) -> list[tuple[str, tuple[int, ...]]]:
    rows = []
    for i, c in enumerate(ins):
        rows += [(f"{prefix}.lateral_convs.{i}.conv.weight", (out, c, 1, 1, 1))]
        rows += [(f"{prefix}.lateral_convs.{i}.conv.bias", (out,))]
    rows += [(f"{prefix}.fpn_convs.0.conv.weight", (out, out, 3, 3, 3))]
    rows += [(f"{prefix}.fpn_convs.0.conv.bias", (out,))]
    return rows


def official_keys() -> list[tuple[str, tuple[int, ...]]]:
    """``(key, shape)`` of every entry of the released SAM++ state dict."""
    rows = _conv_bn("backbone.conv1", 64, 1, (3, 7, 7))
    inplanes = 64
    for stage, inflate in enumerate((0, 0, 1, 1)):
        planes = 64 * 2**stage
        kernel = (3, 3, 3) if inflate else (1, 3, 3)
        for block in range(2):
            name = f"backbone.layer{stage + 1}.{block}"
            rows += _conv_bn(f"{name}.conv1", planes, inplanes if block == 0 else planes, kernel)
            rows += _conv_bn(f"{name}.conv2", planes, planes, kernel)
            if block == 0:
                rows += _conv_bn(f"{name}.downsample", planes, inplanes, (1, 1, 1))
        inplanes = planes
    rows += _fpn("neck", [64, 128, 256])
    rows += _fpn("read_out_head", [512])
    rows += _fpn("semantic_head", [64, 128, 256])
    return rows


def main() -> None:
    """Rewrite ``official_keys.txt`` beside this file."""
    head = [
        "# SAM++ / Cross-SAM state dict (SAM.pth: the same without semantic_head.*)",
        "# source: alibaba-damo-academy/self-supervised-anatomical-embedding-v2 @ 035bbfc",
        "# derived by reading configs/samv2/samv2_NIHLN.py, sam/models/backbones/resnet3d.py,",
        "# sam/models/necks/fpn3d.py and mmcv ConvModule naming (see official_keys.py);",
        "# not read from a released file (those are on ModelScope, not reachable here)",
        "# key<TAB>shape",
    ]
    lines = [f"{k}\t{','.join(map(str, s))}" for k, s in official_keys()]
    (Path(__file__).parent / "official_keys.txt").write_text("\n".join(head + lines) + "\n")


if __name__ == "__main__":
    main()
