"""Reference of SegVol's training step: the loss lines and the prompt rules, for agreement checks.

A re-implementation (not a copy), statement by statement, of BAAI-DCAI/SegVol @5768c97:

- ``train.py`` lines 62-92: per batch, each category present in the batch is its own step:
  ``sl_loss, ssl_loss = model(...)``, ``loss = sl_loss + 0.1 * ssl_loss``, ``backward``, ``step``.
- ``network/model.py`` lines 33-48 (``forward``: encode, then the supervised and the pseudo-mask
  terms), 50-76 (``forward_decoder``: text encoded under ``no_grad``, logits up to the input size
  trilinearly), 78-92 (``supervised_forward``: six prompt options in a fixed order, each adding
  ``BinaryDiceLoss + BCELoss`` of ``logits.squeeze()``), 94-107 (``unsupervised_forward``: six
  passes, points on even ones, a box on odd ones), 109-137 (``build_prompt_label``: the text, the
  tight box, 1 + U[0, 10] positive and U[0, 10] negative points padded to 21), 139-165
  (``build_pseudo_point_prompt_label``: a random pseudo region, U[4, 10] extra positives),
  167-200 (``build_pseudo_box_prompt_label``: a random region, its box, plus every region more
  than 90 % inside the box).
- ``utils/loss.py`` lines 11-35 (``BinaryDiceLoss``: sigmoid, smooth 1, rows = first axis, mean)
  and 37-49 (``BCELoss``: ``BCEWithLogitsLoss``, mean), -1 targets set to 0 in both.
- ``utils/monai_inferers_utils.py`` lines 365-404 (``generate_box`` without ``bbox_shift``: the
  tight box, or ``[-1] * 6`` for an empty mask) and 405-460 (``select_points``).

The network is segfm's (its agreement with the released one is tested apart); the only change
of calling convention is the box, ``[B, 6]`` where the original's prompt encoder took
``[B, 1, 6]``. Every random draw goes through a :class:`Draws` object, so a test can inject
the draws segfm made; :class:`OriginalDraws` makes them as the original did (Python's ``random``
for counts and region choices, torch's global generator inside ``select_points``).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

PROMPT_OPTIONS = ("point+text", "box+text", "text", "box", "point", "box+point")  # model.py 81-83
DECODER_ITER = 6  # model.py line 31


class Draws(Protocol):
    """The random draws of the original's training step."""

    def randint(self, low: int, high: int) -> int:
        """``random.randint(low, high)`` (both ends included)."""

    def choice(self, ids: Tensor) -> int:
        """``random.choice(ids).item()``."""

    def torch_randint(self, n: int) -> int:
        """``torch.randint(n, (1,))``: the first positive point."""

    def randperm(self, n: int) -> Tensor:
        """``torch.randperm(n)``: the order of the extra points."""


class OriginalDraws:
    """The original's sources of randomness, seeded."""

    def __init__(self, seed: int) -> None:
        self.random = random.Random(seed)
        self.generator = torch.Generator().manual_seed(seed)

    def randint(self, low: int, high: int) -> int:
        return self.random.randint(low, high)

    def choice(self, ids: Tensor) -> int:
        return int(self.random.choice(ids).item())

    def torch_randint(self, n: int) -> int:
        return int(torch.randint(n, (1,), generator=self.generator))

    def randperm(self, n: int) -> Tensor:
        return torch.randperm(n, generator=self.generator)


# --- utils/loss.py --------------------------------------------------------------------------


def binary_dice_loss(predict: Tensor, target: Tensor) -> Tensor:
    """``BinaryDiceLoss.forward`` (smooth 1, p unused, rows = the first axis, mean)."""
    predict = torch.sigmoid(predict)
    target_ = target.clone()
    target_[target == -1] = 0
    predict = predict.contiguous().view(predict.shape[0], -1)
    target_ = target_.contiguous().view(target_.shape[0], -1)
    num = torch.sum(predict * target_, dim=1)
    den = torch.sum(predict, dim=1) + torch.sum(target_, dim=1) + 1
    dice_loss = 1 - 2 * num / den
    return dice_loss.sum() / dice_loss.shape[0]


def bce_loss(predict: Tensor, target: Tensor) -> Tensor:
    """``BCELoss.forward``: -1 targets to 0, then ``BCEWithLogitsLoss`` (mean)."""
    target_ = target.clone()
    target_[target == -1] = 0
    return F.binary_cross_entropy_with_logits(predict, target_)


# --- utils/monai_inferers_utils.py ------------------------------------------------------------


def generate_box(mask: Tensor) -> Tensor:
    """``generate_box(pred_pre, bbox_shift=None)``: tight corners, ``[-1] * 6`` when empty."""
    ones_idx = (mask > 0).nonzero(as_tuple=True)
    if all(t.nelement() == 0 for t in ones_idx):
        return torch.tensor([-1, -1, -1, -1, -1, -1])
    lows = [max(0, int(axis.min())) for axis in ones_idx]
    highs = [min(mask.shape[i], int(axis.max())) for i, axis in enumerate(ones_idx)]
    return torch.cat((torch.tensor(lows), torch.tensor(highs)))


def select_points(
    preds: Tensor,
    num_positive_extra: int,
    num_negative_extra: int,
    fix_extra_point_num: int | None,
    draws: Draws,
) -> tuple[Tensor, Tensor]:
    """``select_points``: a positive (or a -1 point), extra positives, negatives, -1 padding."""
    points = torch.zeros((0, 3))
    labels = torch.zeros(0)
    positive = torch.nonzero(preds > 0.9, as_tuple=True)
    negative = torch.nonzero(preds < 0.1, as_tuple=True)
    if positive[0].nelement() == 0:
        num_positive_extra = 0
        points = torch.cat((points, torch.tensor([[-1.0, -1.0, -1.0]])))
        labels = torch.cat((labels, torch.tensor([-1.0])))
    else:
        i = draws.torch_randint(len(positive[0]))
        points = torch.cat((points, torch.tensor([[float(axis[i]) for axis in positive]])))
        labels = torch.cat((labels, torch.ones(1)))
    if num_positive_extra > 0:
        chosen = draws.randperm(len(positive[0]))[:num_positive_extra]
        extra = torch.tensor([[float(axis[j]) for axis in positive] for j in chosen]).reshape(-1, 3)
        points = torch.cat((points, extra))
        labels = torch.cat((labels, torch.ones(extra.shape[0])))
    if num_negative_extra > 0:
        chosen = draws.randperm(len(negative[0]))[:num_negative_extra]
        extra = torch.tensor([[float(axis[j]) for axis in negative] for j in chosen]).reshape(-1, 3)
        points = torch.cat((points, extra))
        labels = torch.cat((labels, torch.zeros(extra.shape[0])))
    if fix_extra_point_num is None:
        left = num_positive_extra + num_negative_extra + 1 - labels.shape[0]
    else:
        left = fix_extra_point_num + 1 - labels.shape[0]
    for _ in range(left):
        points = torch.cat((points, torch.tensor([[-1.0, -1.0, -1.0]])))
        labels = torch.cat((labels, torch.tensor([-1.0])))
    return points, labels


# --- network/model.py -------------------------------------------------------------------------


def forward_decoder(
    model: Any,
    image_embedding: Tensor,
    img_shape: Sequence[int],
    text: list[str] | None,
    boxes: Tensor | None,
    points: tuple[Tensor, Tensor] | None,
) -> Tensor:
    """``SegVol.forward_decoder``: text under ``no_grad``, decoder, trilinear up to the input."""
    with torch.no_grad():
        text_embedding = model.text_encoder(text) if text is not None else None
    sparse, dense = model.prompt_encoder(points=points, boxes=boxes, text_embedding=text_embedding)
    low_res_masks, _ = model.mask_decoder(
        image_embeddings=image_embedding,
        text_embedding=text_embedding,
        image_pe=model.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=False,
    )
    size = tuple(img_shape)
    return F.interpolate(low_res_masks, size=size, mode="trilinear", align_corners=False)


def build_prompt_label(
    bs: int, organ: str, train_labels: Tensor, draws: Draws
) -> tuple[tuple[Tensor, Tensor], Tensor, list[str]]:
    """``build_prompt_label``: per sample the name, the tight box and 21 points."""
    organs, boxes, points, point_labels = [], [], [], []
    for b in range(bs):
        organs.append(organ)
        boxes.append(generate_box(train_labels[b]))
        n_pos, n_neg = draws.randint(0, 10), draws.randint(0, 10)
        point, label = select_points(train_labels[b], n_pos, n_neg, 20, draws)
        points.append(point)
        point_labels.append(label)
    return (torch.stack(points), torch.stack(point_labels)), torch.stack(boxes).float(), organs


def supervised_forward(
    model: Any,
    embedding: Tensor,
    img_shape: Sequence[int],
    organ: str,
    labels: Tensor,
    draws: Draws,
) -> Tensor:
    """``supervised_forward``: the six prompt options, Dice + BCE of the squeezed logits."""
    points, boxes, organs = build_prompt_label(labels.shape[0], organ, labels, draws)
    options = {
        "point+text": (None, points, organs),
        "box+text": (boxes, None, organs),
        "text": (None, None, organs),
        "box": (boxes, None, None),
        "point": (None, points, None),
        "box+point": (boxes, points, None),
    }
    sl_loss = torch.zeros(())
    for name in PROMPT_OPTIONS:
        bboxes, pts, text = options[name]
        logits = forward_decoder(model, embedding, img_shape, text, bboxes, pts)
        squeezed, target = logits.squeeze().float(), labels.squeeze().float()
        sl_loss = sl_loss + binary_dice_loss(squeezed, target) + bce_loss(squeezed, target)
    return sl_loss


def build_pseudo_point_prompt_label(
    input_shape: Sequence[int], seg_labels: Tensor, draws: Draws
) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """``build_pseudo_point_prompt_label``: a random region, 1 + U[4, 10] positives."""
    pseudo_labels = torch.zeros(tuple(input_shape))
    points, point_labels = [], []
    for b in range(input_shape[0]):
        ids = torch.unique(seg_labels[b])
        ids = ids[ids != -1]
        region = draws.choice(ids)
        pseudo_labels[b][seg_labels[b] == region] = 1
        n_pos, n_neg = draws.randint(4, 10), draws.randint(0, 10)
        point, label = select_points(pseudo_labels[b][0], n_pos, n_neg, 20, draws)
        points.append(point)
        point_labels.append(label)
    return pseudo_labels, (torch.stack(points), torch.stack(point_labels))


def build_pseudo_box_prompt_label(
    input_shape: Sequence[int], seg_labels: Tensor, draws: Draws
) -> tuple[Tensor, Tensor]:
    """``build_pseudo_box_prompt_label``: a random region, its box, regions > 90 % inside it."""
    pseudo_labels = torch.zeros(tuple(input_shape))
    boxes = []
    for b in range(input_shape[0]):
        ids = torch.unique(seg_labels[b])
        ids = ids[ids != -1]
        region = draws.choice(ids)
        pseudo_labels[b][seg_labels[b] == region] = 1
        box = generate_box(pseudo_labels[b][0])
        boxes.append(box)
        x0, y0, z0, x1, y1, z1 = (int(v) for v in box)
        cube = torch.zeros_like(pseudo_labels[b][0]).int()
        cube[x0 : x1 + 1, y0 : y1 + 1, z0 : z1 + 1] = 1
        mask_label = seg_labels[b][0]
        for value in torch.unique(mask_label[cube == 1]):
            if value == -1:
                continue
            area = mask_label == value
            iou = (cube.bool() & area).float().sum() / area.float().sum()
            if iou > 0.90:
                pseudo_labels[b][seg_labels[b] == value] = 1
    return pseudo_labels, torch.stack(boxes).float()


def unsupervised_forward(
    model: Any, embedding: Tensor, pseudo_seg: Tensor, img_shape: Sequence[int], draws: Draws
) -> Tensor:
    """``unsupervised_forward``: six passes on pseudo regions, Dice + BCE of the squeeze."""
    shape = (embedding.shape[0], 1, *img_shape)
    ssl_loss = torch.zeros(())
    for step in range(DECODER_ITER):
        if step % 2 == 0:
            labels, points = build_pseudo_point_prompt_label(shape, pseudo_seg, draws)
            logits = forward_decoder(model, embedding, img_shape, None, None, points)
        else:
            labels, boxes = build_pseudo_box_prompt_label(shape, pseudo_seg, draws)
            logits = forward_decoder(model, embedding, img_shape, None, boxes, None)
        squeezed, target = logits.squeeze().float(), labels.squeeze().float()
        ssl_loss = ssl_loss + binary_dice_loss(squeezed, target) + bce_loss(squeezed, target)
    return ssl_loss


def training_losses(
    model: Any,
    image: Tensor,
    organ: str,
    labels: Tensor,
    pseudo_seg: Tensor,
    draws: Draws,
    use_pseudo_label: bool = True,
) -> tuple[Tensor, Tensor, Tensor]:
    """One category's step of ``train.py``: ``(loss, sl_loss, ssl_loss)``, before ``backward``.

    Args:
        model: segfm's SegVol network (``image_encoder``, ``prompt_encoder``, ``mask_decoder``,
            ``text_encoder``).
        image: ``[B, 1, D, H, W]``.
        organ: The category's name (``organ_name_list[cls_idx]``).
        labels: Its binary targets ``[B, D, H, W]`` (``gt3D[:, cls_idx]``).
        pseudo_seg: ``pseudo_seg_cleaned`` ``[B, 1, D, H, W]`` (-1 = cleansed away).
        draws: The random draws.
        use_pseudo_label: ``--use_pseudo_label`` (the pseudo term is computed either way).
    """
    img_shape = tuple(image.shape[2:])
    embedding = model.image_encoder(image)  # segfm's encoder returns [B, C, *g] directly
    sl_loss = supervised_forward(model, embedding, img_shape, organ, labels, draws)
    ssl_loss = unsupervised_forward(model, embedding, pseudo_seg, img_shape, draws)
    loss = sl_loss + 0.1 * ssl_loss if use_pseudo_label else sl_loss
    return loss, sl_loss, ssl_loss
