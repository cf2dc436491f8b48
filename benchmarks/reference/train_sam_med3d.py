"""Reference of one SAM-Med3D training step, line by line as the original computes it.

A re-implementation (not a copy) of the loss and click lines of uni-medical/SAM-Med3D @f3de1fa:

- ``train.py`` 343-344: ``tio.ZNormalization(masking_method=lambda x: x > 0)`` applied to the
  ``[N, W, H, D]`` batch (``image3D.squeeze(dim=1)``): one mean and one standard deviation
  (unbiased, ``torch.std``) over the voxels > 0 of all crops together.
- ``train.py`` 349-359: the image encoder once per batch, then ``interaction`` with 11 clicks.
- ``train.py`` 267-291 (``interaction``): the previous mask starts at zeros, the first mask
  prompt is its 32³ (``img_size // 4``) nearest resize; ``random_insert = np.random.randint(2,
  9)`` (2..8); at ``random_insert`` and at the last iteration the decoder gets the mask prompt
  alone (``points=None``); the loss is summed over the iterations.
- ``train.py`` 247-265 (``get_points``): only the newest click (``multi_click`` False).
- ``train.py`` 227-245 (``batch_forward``): prompt encoder, decoder with ``multimask_output=False``;
  the low-res logits go back as the next mask prompt without ``detach``; the logits upsampled
  (trilinear, ``align_corners=False``) to the crop are the previous mask of the next click.
- ``train.py`` 136 (``DiceCELoss(sigmoid=True, squared_pred=True, reduction='mean')``) with the
  MONAI it pins (1.2): Dice with squared denominators, smoothing 1e-5, mean over items and the
  channel; its CE term is ``cross_entropy`` over the one channel, whose softmax is 1, so 0.
- ``train.py`` 365: ``loss /= accumulation_steps`` before ``backward`` (left to the caller).
- ``utils/click_method.py`` 191-223 (``get_next_click3D_torch_2``): previous *logits* > 0.5 (the
  raw-logit quirk), ``FN = GT & ~pred``, ``FP = ~GT & pred``, one voxel of ``FN | FP`` drawn by
  ``np.random.randint(len(points))`` over ``torch.argwhere`` (raster order), positive iff in FN;
  it fails when there is no error.

The random draws are injected: ``random_insert`` and ``draw(points) -> row`` replace
``np.random.randint(2, 9)`` and ``np.random.randint(len(points))``, so a test can give the
reference and segfm the same clicks. Volumes
are in the network's axis order (TorchIO's ``W, H, D``), as the original feeds them. The two
``.float()`` casts of the original keep float64 inputs in float64, so that a test can run the
reference in float64 (in float32 a ReLU pre-activation rounded to 0 in one implementation and to
2e-7 in the other switches that unit's gradient on or off: see the training test).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor


def z_normalize_batch(image3D: Tensor) -> Tensor:
    """``train.py`` 343-344: one z-score over the voxels > 0 of the whole batch ``[N, 1, ...]``."""
    x = image3D.squeeze(dim=1).clone()  # TorchIO sees an N-channel image
    x = x.to(torch.promote_types(x.dtype, torch.float32))  # ``.float()``; float64 stays float64
    values = x.masked_select(x > 0)
    mean, std = values.mean(), values.std()
    x -= mean
    x /= std
    return x.unsqueeze(dim=1)


def dice_ce_monai12(pred: Tensor, target: Tensor) -> Tensor:
    """MONAI 1.2's ``DiceCELoss(sigmoid=True, squared_pred=True)`` on one channel (mean)."""
    prob = torch.sigmoid(pred)
    gt = target.to(prob.dtype)
    dims = tuple(range(2, pred.ndim))
    intersection = (prob * gt).sum(dims)
    denominator = (gt**2).sum(dims) + (prob**2).sum(dims)
    dice = (1.0 - (2.0 * intersection + 1e-5) / (denominator + 1e-5)).mean()
    ce = F.cross_entropy(pred, gt)  # MONAI 1.2's ``ce`` for one channel: 0
    return dice + ce


def next_click(
    prev_seg: Tensor, gt_semantic_seg: Tensor, draw: Callable[[Tensor], int]
) -> tuple[list[Tensor], list[Tensor]]:
    """``get_next_click3D_torch_2``: one click per item from ``FN | FP`` of logits > 0.5."""
    pred_masks = prev_seg > 0.5
    true_masks = gt_semantic_seg > 0
    fn_masks = torch.logical_and(true_masks, torch.logical_not(pred_masks))
    fp_masks = torch.logical_and(torch.logical_not(true_masks), pred_masks)
    to_point_mask = torch.logical_or(fn_masks, fp_masks)
    batch_points, batch_labels = [], []
    for i in range(gt_semantic_seg.shape[0]):
        points = torch.argwhere(to_point_mask[i])
        point = points[draw(points)]  # the original: np.random.randint(len(points))
        is_positive = bool(fn_masks[i, 0, point[1], point[2], point[3]])
        batch_points.append(point[1:].clone().detach().reshape(1, 1, 3))
        batch_labels.append(torch.tensor([int(is_positive)]).reshape(1, 1))
    return batch_points, batch_labels


def batch_forward(
    sam_model: Any, image_embedding: Tensor, gt3D: Tensor, low_res_masks: Tensor, points: Any
) -> tuple[Tensor, Tensor]:
    """``batch_forward``: decode one prompt set per item; low-res and crop-size logits."""
    sparse_embeddings, dense_embeddings = sam_model.prompt_encoder(
        points=points, boxes=None, masks=low_res_masks
    )
    low_res_masks, _ = sam_model.mask_decoder(
        image_embeddings=image_embedding,
        image_pe=sam_model.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse_embeddings,
        dense_prompt_embeddings=dense_embeddings,
        multimask_output=False,
    )
    prev_masks = F.interpolate(
        low_res_masks, size=gt3D.shape[-3:], mode="trilinear", align_corners=False
    )
    return low_res_masks, prev_masks


def interaction(
    sam_model: Any,
    image_embedding: Tensor,
    gt3D: Tensor,
    num_clicks: int,
    random_insert: int,
    draw: Callable[[Tensor], int],
    clicks: list[tuple[Tensor, Tensor]] | None = None,
) -> tuple[Tensor, Tensor]:
    """``interaction``: ``num_clicks`` decoder steps; the summed loss and the last logits.

    ``clicks``, when given, receives every step's ``(points [N, 1, 3], labels [N, 1])``.
    """
    return_loss: Tensor | float = 0.0
    prev_masks = torch.zeros_like(gt3D)
    side = gt3D.shape[-1] // 4
    # the original: ``prev_masks.float()``; the embedding's dtype, so the reference runs in float64
    low_res_masks = F.interpolate(prev_masks.to(image_embedding.dtype), size=(side, side, side))
    for num_click in range(num_clicks):
        batch_points, batch_labels = next_click(prev_masks, gt3D, draw)
        points_input = torch.cat(batch_points, dim=0)  # newest click only (multi_click False)
        labels_input = torch.cat(batch_labels, dim=0)
        if clicks is not None:
            clicks.append((points_input, labels_input))
        if num_click == random_insert or num_click == num_clicks - 1:
            low_res_masks, prev_masks = batch_forward(
                sam_model, image_embedding, gt3D, low_res_masks, points=None
            )
        else:
            low_res_masks, prev_masks = batch_forward(
                sam_model, image_embedding, gt3D, low_res_masks, [points_input, labels_input]
            )
        return_loss = return_loss + dice_ce_monai12(prev_masks, gt3D)
    assert isinstance(return_loss, Tensor)
    return prev_masks, return_loss


def train_step(
    sam_model: Any,
    image3D: Tensor,
    gt3D: Tensor,
    random_insert: int,
    draw: Callable[[Tensor], int],
    num_clicks: int = 11,
    clicks: list[tuple[Tensor, Tensor]] | None = None,
) -> tuple[Tensor, Tensor]:
    """``train_epoch``'s body for one batch ``[N, 1, W, H, D]``: the loss before accumulation."""
    image3D = z_normalize_batch(image3D)
    gt3D = gt3D.type(torch.long)
    image_embedding = sam_model.image_encoder(image3D)
    prev_masks, loss = interaction(
        sam_model, image_embedding, gt3D, num_clicks, random_insert, draw, clicks
    )
    return loss, prev_masks
