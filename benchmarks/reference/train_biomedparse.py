"""Reference of BiomedParse v2's training step: the loss lines and the prompt rules.

A re-implementation (not a copy) that follows the original line by line, for agreement checks
with segfm's ``BiomedParse._step``. The network's forward is
:mod:`benchmarks.reference.biomedparse_v2`; this file holds what happens around it. Sources, in
the fork Lsyyh/BiomedParse_v2 @ 6168155 (the v2 fine-tuning code, which the released branch of
microsoft/BiomedParse does not hold):

- ``src/datasets/biomedparse_dataset.py``, ``BiomedParseDataset.__getitem__`` lines 206-243 (the
  (class, prompt) pairs of one slice and their masks) and ``choose_prompt`` lines 116-122;
- ``src/losses/biomedparse_loss.py``: ``batch_edge_masks`` lines 8-15 and
  ``BiomedParseLossCLS.forward`` lines 137-177;
- ``src/losses/medsam_loss.py``: ``DiceLoss.forward`` lines 128-243 (as configured by
  ``MedSamLoss``: sigmoid, squared denominator, smoothing 1e-5, ``reduction="none"``) and
  ``MedSamLoss.forward`` lines 253-283;
- ``configs/loss/biomedparse_loss.yaml`` (``MedSamLoss(reduction="none")`` inside
  ``BiomedParseLossCLS``) and ``configs/finetune_biomedparse.yaml`` lines 30-33 (``cls_coeff``
  1, ``pos_weight`` 3, ``edge_coeff`` 1).

Deliberate differences: the original draws from the global ``numpy.random`` (class ids) and
``random`` (prompts) modules; here both generators are arguments, so a test can replay the same
draws. The augmentation (``DataAugmentation``) and the channel swap, which run before these
lines, are left out. The original computes the edge loss only when ``edge_coeff > 0`` and then
uses it unconditionally (a ``NameError`` with ``edge_coeff`` 0); here it is always computed.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

#: ``configs/finetune_biomedparse.yaml`` lines 30-33
CLS_COEFF, POS_WEIGHT, EDGE_COEFF = 1.0, 3.0, 1.0
#: ``BiomedParseDataset(num_prompts=4)``
NUM_PROMPTS = 4


# ------------------------------------------------------------------ the dataset's prompt rules
def choose_prompt(prompts: str | list[str], py_random: random.Random) -> str:
    """``choose_prompt`` (lines 116-122): a string as is, one of a list at random."""
    if isinstance(prompts, str):
        return prompts
    if isinstance(prompts, list):
        return py_random.choice(prompts)
    msg = "Invalid prompt type. Must be str or list."
    raise ValueError(msg)


def sample_slice_targets(
    mask_orig: np.ndarray,
    class_prompts: dict[str, Any],
    is_instance: int,
    np_random: np.random.RandomState,
    py_random: random.Random,
    num_prompts: int = NUM_PROMPTS,
) -> tuple[str, list[int], np.ndarray]:
    """The prompts of one slice: ``__getitem__`` lines 206-243 (``all_class_masks`` False).

    Args:
        mask_orig: Label slice ``[H, W]`` (class ids, or instance ids when ``is_instance``).
        class_prompts: The dataset's entry of ``class_prompts.json`` (``"1": [...]``, ...,
            ``"instance_label"``).
        is_instance: ``instance_label`` of the annotation.
        np_random: Stands for the global ``numpy.random`` (the class draw).
        py_random: Stands for the global ``random`` (the prompt draw).
        num_prompts: Pairs per slice.

    Returns:
        The prompts joined with ``[SEP]``, the class ids, and the label maps ``[P, H, W]``
        (uint8: binary for semantic classes, the instance ids for instances).
    """
    if is_instance:
        # every instance of the dataset's first class, num_prompts times
        all_classes = [int(k) for k in class_prompts if k != "instance_label"]
        class_ids = [all_classes[0] for _ in range(num_prompts)]
        mask = mask_orig.astype(np.uint8)
        mask = np.repeat(mask[None, :, :], num_prompts, axis=0)
    else:
        # all the dataset's classes, present in the slice or not: absent ones are negatives
        all_classes = [int(k) for k in class_prompts if k != "instance_label"]
        replace = len(all_classes) < num_prompts
        class_ids = list(np_random.choice(all_classes, size=num_prompts, replace=replace))
        mask = np.stack([(1 * (mask_orig == c)).astype(np.uint8) for c in class_ids])
    sentences = [choose_prompt(class_prompts[str(c)], py_random) for c in class_ids]
    return "[SEP]".join(sentences), [int(c) for c in class_ids], mask


# --------------------------------------------------------------------------------- the loss
def batch_edge_masks(masks: Tensor) -> Tensor:
    """``batch_edge_masks`` (lines 8-15): 3x3 dilation minus erosion > 0, edges replicated."""
    x = F.pad(masks.float(), (1, 1, 1, 1), mode="replicate")
    dilated = F.max_pool2d(x, 3, stride=1)
    eroded = -F.max_pool2d(-x, 3, stride=1)
    return (1 * ((dilated - eroded) > 0)).float()


def dice_loss(logits: Tensor, target: Tensor) -> Tensor:
    """``DiceLoss(sigmoid=True, squared_pred=True, reduction="none")``: ``[N, C, 1, 1]``."""
    probs = torch.sigmoid(logits)
    axes = list(range(2, probs.ndim))
    intersection = torch.sum(target * probs, dim=axes)
    denominator = torch.sum(target**2, dim=axes) + torch.sum(probs**2, dim=axes)
    f = 1.0 - (2.0 * intersection + 1e-5) / (denominator + 1e-5)
    return f.view(*f.shape[:2], *([1] * len(axes)))


def medsam_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """``MedSamLoss(reduction="none")``: per sample Dice + BCE, each averaged over the rest."""
    dice = dice_loss(logits, targets)
    bce = F.binary_cross_entropy_with_logits(logits, targets.float(), reduction="none")
    bce = bce.mean(dim=tuple(range(1, bce.ndim)))
    dice = dice.mean(dim=tuple(range(1, dice.ndim)))
    return dice + bce


def biomedparse_loss_cls(
    predictions: dict[str, Tensor],
    labels: Tensor,
    cls_coeff: float = CLS_COEFF,
    pos_weight: float = POS_WEIGHT,
    edge_coeff: float = EDGE_COEFF,
    antialias: bool = True,
) -> Tensor:
    """``BiomedParseLossCLS.forward`` (lines 147-177) with ``MedSamLoss(reduction="none")``.

    Args:
        predictions: ``pred_gmasks`` and ``edge_masks`` ``[B*P, 1, h, w]``, ``object_existence``
            ``[B*P, 1]`` (the network's training outputs).
        labels: ``[B, P, H, W]`` label maps of :func:`sample_slice_targets`, stacked.
        cls_coeff: Weight of the existence BCE.
        pos_weight: Positive weight of the existence BCE.
        edge_coeff: Weight of the edge loss.
        antialias: As the original (True); False only to show that a test notices the change.

    Returns:
        The scalar loss.
    """
    batch_size, num_masks, height, width = labels.shape
    labels = labels.view(batch_size * num_masks, 1, height, width)
    target_masks = (1 * (labels > 0)).float()
    pred_gmasks = predictions["pred_gmasks"]
    if pred_gmasks.shape[-2:] != (height, width):
        pred_gmasks = F.interpolate(
            pred_gmasks,
            size=(height, width),
            mode="bicubic",
            align_corners=False,
            antialias=antialias,
        )
    existence_target = (target_masks.flatten(1).sum(dim=1) > 0).float()
    seg_loss = medsam_loss(pred_gmasks, target_masks)
    cls_loss = F.binary_cross_entropy_with_logits(
        predictions["object_existence"].view(batch_size * num_masks),
        existence_target,
        pos_weight=torch.tensor(pos_weight),
        reduction="none",
    )
    edge_masks = predictions["edge_masks"]
    if edge_masks.shape[-2:] != (height, width):
        edge_masks = F.interpolate(
            edge_masks,
            size=(height, width),
            mode="bicubic",
            align_corners=False,
            antialias=antialias,
        )
    edge_loss = medsam_loss(edge_masks.float(), batch_edge_masks(labels).float())
    total = cls_coeff * cls_loss + seg_loss * existence_target
    total = total + edge_coeff * edge_loss * existence_target
    return total.mean()
