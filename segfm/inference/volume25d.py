"""2.5D volume inference: a volume's slices through a slice network, decoded back to the volume.

BiomedParse v2's 3D inference (the original's ``utils.process_input``,
``BiomedParseModel.forward_eval`` and ``process_output``): the volume is encoded slice by slice
(:func:`~segfm.transforms.encoding25d.encode_volume`, inference path), every slice is decoded for
every prompt, ``slice_batch_size`` slices at a time; the logits are upsampled to the slice size
(:func:`upsample`: bicubic with ``antialias=True``, as the original's ``inference.py``), passed
through a sigmoid, :func:`suppress` per slice, :func:`merge` with a 0.5 background, and the
per-slice label maps are mapped back onto the volume
(:func:`~segfm.transforms.encoding25d.decode_slices`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from segfm.models.biomedparse import BiomedParse
from segfm.transforms.encoding25d import decode_slices, encode_volume


def upsample(logits: Tensor, size: tuple[int, int]) -> Tensor:
    """Logits ``[N, 1, h, w]`` resized to ``size`` as the original's loss and inference do.

    Bicubic with ``antialias=True`` (PIL's kernel, ``a = -0.5``, weights renormalised at the
    borders), in float32, and only when the size differs.
    """
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits.float()
    return F.interpolate(
        logits.float(), size=size, mode="bicubic", align_corners=False, antialias=True
    )


@dataclass(frozen=True)
class SliceOptions:
    """How :func:`segment_volume_25d` batches and post-processes the slices.

    Args:
        slice_batch_size: Slices per forward pass.
        existence_threshold: Existence probability above which a prompt is kept.
        nms_iou: IoU above which the lower-existence of two prompts is dropped.
    """

    slice_batch_size: int = 4
    existence_threshold: float = 0.5
    nms_iou: float = 0.5

    def __post_init__(self) -> None:
        checks = {
            "slice_batch_size": (self.slice_batch_size, ">= 1", self.slice_batch_size >= 1),
            "existence_threshold": (
                self.existence_threshold,
                "in (0, 1)",
                0 < self.existence_threshold < 1,
            ),
            "nms_iou": (self.nms_iou, "in (0, 1]", 0 < self.nms_iou <= 1),
        }
        for name, (value, rule, ok) in checks.items():
            if not ok:
                msg = f"slices.{name} must be {rule}, got {value}; fix the model's slices options"
                raise ValueError(msg)


def suppress(probs: Tensor, existence: Tensor, threshold: float, iou: float) -> Tensor:
    """The original's post-processing of one slice's prompts (probabilities zeroed when dropped).

    One prompt: its mask times ``existence > threshold``. Several: prompts with existence below
    ``threshold`` are dropped, and the rest visited by decreasing existence; one whose mask
    (``> 0.5``) overlaps a kept one with IoU above ``iou`` is dropped.

    Args:
        probs: Mask probabilities ``[P, H, W]``.
        existence: Existence probabilities ``[P]``.
        threshold: Existence threshold.
        iou: Largest IoU with a kept mask.

    Returns:
        ``[P, H, W]``.
    """
    keep = existence > threshold
    if probs.shape[0] > 1:
        masks = (probs > 0.5).flatten(1).float()
        inter = masks @ masks.T
        area = masks.sum(1)
        ious = inter / (area[:, None] + area[None, :] - inter).clamp(min=1)
        kept: list[int] = []
        for p in torch.argsort(existence, descending=True, stable=True).tolist():
            if keep[p] and all(ious[p, k] <= iou for k in kept):
                kept.append(p)
        keep = torch.zeros_like(keep)
        keep[kept] = True
    return probs * keep[:, None, None]


def merge(probs: Tensor, ids: Sequence[int]) -> Tensor:
    """Label map ``[..., H, W]``: argmax over a 0.5 background and ``probs [P, ..., H, W]``."""
    background = torch.full_like(probs[:1], 0.5)
    index = torch.cat([background, probs]).argmax(0)
    lut = torch.tensor([0, *ids], device=probs.device, dtype=torch.int64)
    return lut[index]


@torch.no_grad()
def segment_volume_25d(
    network: BiomedParse,
    image: Tensor,
    text: Tensor,
    ids: Sequence[int],
    options: SliceOptions,
    size: int = 512,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Label map of the prompted classes of one volume.

    Args:
        network: The slice network (in evaluation mode).
        image: Intensities ``[D, H, W]`` in 0-255.
        text: Grounding tokens ``[T, P, C]`` of the ``P`` prompts, on the network's device.
        ids: Class id of each prompt (``P`` ids).
        options: Slice batching and post-processing.
        size: Side of the encoded slices (512 for the released weights).
        generator: Random generator of the decoder's Boltzmann sampling, on the device.

    Returns:
        int64 ``[D, H, W]`` on the CPU: the prompts' ids, 0 for background.
    """
    slices, geometry = encode_volume(image.float(), size=size, inference=True)
    slices = slices.to(text.device)
    labels = []
    step, p = options.slice_batch_size, len(ids)
    for start in range(0, slices.shape[0], step):
        part = slices[start : start + step]
        n = part.shape[0]
        out = network.decode(network.encode_image(part), text.repeat(1, n, 1), [p] * n, generator)
        probs = upsample(out.masks, (size, size)).sigmoid().view(n, p, size, size)
        exist = out.existence.float().sigmoid().view(n, p)
        for i in range(n):
            kept = suppress(probs[i], exist[i], options.existence_threshold, options.nms_iou)
            labels.append(merge(kept, ids))
    return decode_slices(torch.stack(labels).cpu(), geometry)
