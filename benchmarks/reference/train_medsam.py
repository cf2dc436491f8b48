"""Reference of one MedSAM training step, following bowang-lab/MedSAM @d71e8a1 line by line.

Only the loss lines and the prompt rule are followed, nothing else (no data loading, AMP or
checkpointing). Written from reading ``train_one_gpu.py``:

- the box rule (``NpyDataset.__getitem__``, lines 94-108): one label drawn from the labels
  present in the slice becomes the binary target; its tight box (inclusive pixel indices) has
  each side pushed out by ``randint(0, bbox_shift)``, drawn in the order x_min, x_max, y_min,
  y_max, and clamped to ``[0, W]`` / ``[0, H]``;
- the forward pass (``MedSAM.forward``, lines 222-248): the image encoder on the batch, the
  frozen prompt encoder under ``no_grad`` on boxes ``[B, 1, 4]``, the mask decoder with one
  mask output, the low-resolution logits upsampled bilinearly to the image size;
- the loss (lines 284-286 and 333): MONAI ``DiceLoss(sigmoid=True, squared_pred=True,
  reduction="mean")`` plus ``BCEWithLogitsLoss(reduction="mean")``, 1:1;
- the optimiser (lines 274-279): AdamW over the image encoder and mask decoder.

The draws are injected (``choices`` and ``shifts``) so that a test can give both
implementations the same prompts. The mask decoder is called one image at a time: the
segment-anything release repeats each embedding once per prompt (its batch-of-images bug),
which MedSAM's own fork guards against; one prompt per image makes the two identical.
"""

from __future__ import annotations

from collections.abc import Sequence

import monai
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn


def box_of(gt: np.ndarray, label_id: int, shift: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """The binary target and its jittered box, as ``NpyDataset.__getitem__`` builds them.

    Args:
        gt: Label slice ``[H, W]``.
        label_id: The drawn label (``random.choice(label_ids)`` in the original).
        shift: The four ``randint(0, bbox_shift)`` draws, in the order x_min, x_max, y_min, y_max.

    Returns:
        ``gt2D`` (uint8) and the box ``[x_min, y_min, x_max, y_max]``.
    """
    gt2D = np.uint8(gt == label_id)
    y_indices, x_indices = np.where(gt2D > 0)
    x_min, x_max = np.min(x_indices), np.max(x_indices)
    y_min, y_max = np.min(y_indices), np.max(y_indices)
    H, W = gt2D.shape
    x_min = max(0, x_min - shift[0])
    x_max = min(W, x_max + shift[1])
    y_min = max(0, y_min - shift[2])
    y_max = min(H, y_max + shift[3])
    return gt2D, np.array([x_min, y_min, x_max, y_max])


class MedSAMReference(nn.Module):
    """``MedSAM`` of ``train_one_gpu.py``: segment-anything's parts, prompt encoder frozen."""

    def __init__(self, sam: nn.Module) -> None:
        super().__init__()
        self.image_encoder = sam.image_encoder
        self.mask_decoder = sam.mask_decoder
        self.prompt_encoder = sam.prompt_encoder
        for param in self.prompt_encoder.parameters():
            param.requires_grad = False

    def forward(self, image: Tensor, box: np.ndarray) -> Tensor:
        """Full-resolution logits ``[B, 1, H, W]`` of one box per image."""
        image_embedding = self.image_encoder(image)
        with torch.no_grad():
            box_torch = torch.as_tensor(box, dtype=torch.float32, device=image.device)
            if len(box_torch.shape) == 2:
                box_torch = box_torch[:, None, :]
            sparse_embeddings, dense_embeddings = self.prompt_encoder(
                points=None, boxes=box_torch, masks=None
            )
        low_res_masks = torch.cat(
            [
                self.mask_decoder(
                    image_embeddings=image_embedding[i : i + 1],
                    image_pe=self.prompt_encoder.get_dense_pe(),
                    sparse_prompt_embeddings=sparse_embeddings[i : i + 1],
                    dense_prompt_embeddings=dense_embeddings[i : i + 1],
                    multimask_output=False,
                )[0]
                for i in range(image.shape[0])
            ]
        )
        return F.interpolate(
            low_res_masks,
            size=(image.shape[2], image.shape[3]),
            mode="bilinear",
            align_corners=False,
        )

    def optimizer(self, lr: float = 1e-4, weight_decay: float = 0.01) -> torch.optim.AdamW:
        """AdamW over the image encoder and mask decoder (lines 274-279)."""
        params = list(self.image_encoder.parameters()) + list(self.mask_decoder.parameters())
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def training_loss(
    model: MedSAMReference,
    images: Tensor,
    labels: np.ndarray,
    choices: Sequence[int],
    shifts: Sequence[Sequence[int]],
) -> Tensor:
    """The loss of one step on a batch (line 333), from injected label and shift draws.

    Args:
        model: The reference network.
        images: Network inputs ``[B, 3, H, W]`` in [0, 1].
        labels: Label slices ``[B, H, W]``.
        choices: The drawn label id of each slice.
        shifts: The four box-side draws of each slice (x_min, x_max, y_min, y_max).
    """
    pairs = [box_of(labels[b], choices[b], shifts[b]) for b in range(len(labels))]
    gt2D = torch.tensor(np.stack([gt[None] for gt, _ in pairs])).long()
    boxes = np.stack([box for _, box in pairs])
    seg_loss = monai.losses.DiceLoss(sigmoid=True, squared_pred=True, reduction="mean")
    ce_loss = nn.BCEWithLogitsLoss(reduction="mean")
    medsam_pred = model(images, boxes)
    # the original passes the long tensor to DiceLoss; MONAI >= 1.4 needs floats (same values)
    return seg_loss(medsam_pred, gt2D.float()) + ce_loss(medsam_pred, gt2D.float())
