"""MedSAM: SAM fine-tuned with box prompts on 2D slices, applied to volumes by slice propagation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from torch import Tensor, nn
from torchmetrics import MetricCollection
from torchmetrics.segmentation import DiceScore

from segfm.checkpoints.sam import load_into
from segfm.evaluation.interactive import ClassPrompt
from segfm.evaluation.options import Evaluation, Protocol
from segfm.inference.cache import EmbeddingCache
from segfm.inference.slices import SlicePropagation, propagate, refine_slices
from segfm.methods.base import BaseTask
from segfm.models import build_sam
from segfm.prompts import jitter_boxes, masks_to_boxes
from segfm.sample import Batch


@dataclass
class BoxPrompts:
    """How training draws its targets and box prompts.

    Attributes:
        box_shift: Largest outward shift of each box side, in input pixels.
        targets_per_image: Labels (and boxes) sampled per training slice.
    """

    box_shift: int = 20
    targets_per_image: int = 1

    def __post_init__(self) -> None:
        """Check the values."""
        if self.box_shift < 0:
            msg = f"box_shift must be >= 0, got {self.box_shift}"
            raise ValueError(msg)
        if self.targets_per_image < 1:
            msg = f"targets_per_image must be >= 1, got {self.targets_per_image}"
            raise ValueError(msg)


class MedSAM(BaseTask):
    """MedSAM (Ma et al., Nature Communications 2024) on any data module yielding 2D slices.

    Training (``fit``): for each slice, ``train_prompts.targets_per_image`` labels present in it
    become binary targets; each gets its tight box with every side pushed out by
    0..``train_prompts.box_shift`` pixels. The image is encoded once and every box decoded on that
    embedding; the single-mask low-res logits are upsampled to the input size and scored with
    Dice (sigmoid, squared) + BCE, 1:1. The prompt encoder is frozen.

    Inference on volumes ``[1, D, H, W]`` is slice propagation from each class's 3D box
    (:func:`segfm.inference.slices.propagate`); clicks then refine their own slices
    (:func:`segfm.inference.slices.refine_slices`). ``protocol: native`` is MedSAM's own test:
    the interactive protocol with the box alone (no click step).

    Args:
        arch: SAM size (``vit_b`` is the published MedSAM; ``tiny`` for tests and the demo).
        image_size: Network input size; defaults to the architecture's (1024, or 128 for tiny).
        checkpoint: Initial weights: an official SAM file, MedSAM's ``{"model": ...}`` checkpoint
            or a plain state dict.
        freeze_image_encoder: Also freeze the image encoder (decoder-only fine-tuning).
        train_prompts: Box jitter and targets per slice in training.
        inference: Threshold, propagation margin and encoding batch of slice propagation.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        lr_schedule: ``constant`` (the published recipe) or ``cosine``.
        output_dir: Folder for test/predict outputs (default: the run's log folder).
        export_official: Write an official SAM file beside every checkpoint.
        protocol: ``native`` (the box alone), ``interactive`` or ``text`` (refused).
        evaluation: Clicks, NSD tolerance and outputs of test and predict.
    """

    monitor = "val_dice"
    mode = "max"
    official_format = "sam"
    native_protocol: ClassVar[Protocol] = Protocol("interactive", clicks=0)

    def __init__(
        self,
        arch: Literal["vit_b", "vit_l", "vit_h", "tiny"] = "vit_b",
        image_size: int | None = None,
        checkpoint: str | None = None,
        freeze_image_encoder: bool = False,
        train_prompts: BoxPrompts | None = None,
        inference: SlicePropagation | None = None,
        lr: float = 1e-4,
        weight_decay: float = 0.01,
        lr_schedule: Literal["constant", "cosine"] = "constant",
        output_dir: str | None = None,
        export_official: bool = True,
        protocol: Literal["native", "interactive", "text"] = "native",
        evaluation: Evaluation | None = None,
    ) -> None:
        self.arch, self.image_size = arch, image_size
        self.checkpoint, self.freeze_image_encoder = checkpoint, freeze_image_encoder
        self.train_prompts = train_prompts or BoxPrompts()
        self.inference = inference or SlicePropagation()
        self._cache = EmbeddingCache()
        super().__init__(
            lr=lr,
            weight_decay=weight_decay,
            lr_schedule=lr_schedule,
            output_dir=output_dir,
            export_official=export_official,
            protocol=protocol,
            evaluation=evaluation,
        )

    def configure_models(self) -> None:
        """Build SAM, load the initial weights and freeze the prompt encoder."""
        overrides = {} if self.image_size is None else {"image_size": self.image_size}
        self.model = build_sam(self.arch, **overrides)
        if self.checkpoint:
            load_into(self.model, self.checkpoint)
        self.model.prompt_encoder.requires_grad_(False)
        if self.freeze_image_encoder:
            self.model.image_encoder.requires_grad_(False)

    def configure_losses(self) -> None:
        """Dice (sigmoid, squared denominator) and BCE on logits, summed 1:1."""
        self.dice_loss = DiceLoss(sigmoid=True, squared_pred=True, reduction="mean")
        self.bce_loss = nn.BCEWithLogitsLoss(reduction="mean")

    def configure_metrics(self) -> None:
        """Dice of the thresholded masks, per target, for training and validation."""
        dice = DiceScore(num_classes=1, average="macro", input_format="one-hot")
        self.stage_metrics(MetricCollection({"dice": dice}))

    # ------------------------------------------------------------------ training
    def sample_targets(
        self, label: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Binary targets and jittered boxes from a batch of label maps.

        Args:
            label: Label maps ``[B, H, W]``.
            generator: CPU random generator (validation uses a seeded one).

        Returns:
            Targets ``[N, H, W]`` (float), boxes ``[N, 4]`` and the image index ``[N]`` of each.
        """
        targets, index = [], []
        for b in range(label.shape[0]):
            present = torch.unique(label[b])
            present = present[present > 0]
            if present.numel() == 0:
                continue
            order = torch.randperm(present.numel(), generator=generator)
            for c in present[order[: self.train_prompts.targets_per_image].to(present.device)]:
                targets.append(label[b] == c)
                index.append(b)
        if not targets:
            msg = (
                "no labelled pixel in this batch; the data module must yield slices with foreground"
            )
            raise ValueError(msg)
        masks = torch.stack(targets)
        shift, size = self.train_prompts.box_shift, tuple(masks.shape[-2:])
        boxes = jitter_boxes(masks_to_boxes(masks), shift, size, generator)  # type: ignore[arg-type]
        return masks.float(), boxes, torch.tensor(index, device=label.device)

    def _step(self, batch: Batch, batch_idx: int, stage: str) -> Tensor:
        image, label = batch["image"], batch["label"][:, 0]
        generator = None if stage == "train" else torch.Generator().manual_seed(batch_idx)
        targets, boxes, index = self.sample_targets(label, generator)
        embeddings = self.model.encode(image)
        logits, _ = self.model.decode(
            embeddings, boxes=boxes, image_index=index, multimask_output=False
        )
        logits = F.interpolate(logits, size=label.shape[-2:], mode="bilinear", align_corners=False)
        target = targets[:, None]
        loss = self.dice_loss(logits, target) + self.bce_loss(logits, target)
        n = image.shape[0]
        self.log(f"{stage}_loss", loss, batch_size=n, prog_bar=True, sync_dist=stage != "train")
        metrics = getattr(self, f"{stage}_metrics")
        metrics((logits > 0).long(), target.long())
        self.log_dict(metrics, batch_size=n, prog_bar=stage != "train")
        return loss

    # ----------------------------------------------------------------- inference
    @torch.no_grad()
    def segment_interactive(
        self,
        image: Tensor,
        spacing: list[float],
        prompts: dict[int, ClassPrompt],
        previous: Tensor | None,
    ) -> Tensor:
        """Segment classes from boxes, then refine them with clicks (the protocol's interface).

        With boxes and no previous prediction, the boxed classes are segmented by slice
        propagation; every slice with clicks of a class is then decoded again from that
        class's box on the slice and the slice's clicks, replacing the class's mask there.

        Args:
            image: Grey volume ``[D, H, W]``.
            spacing: Voxel size (unused).
            prompts: Box and clicks per class id.
            previous: The previous label map, or None.

        Returns:
            Label map ``[D, H, W]``.
        """
        boxes = {c: p.box for c, p in prompts.items() if p.box is not None}
        if previous is not None:
            seg = previous.clone().long()
        elif boxes:
            seg = propagate(self.model, image, boxes, self._cache, self.inference)
        else:
            seg = torch.zeros(image.shape, dtype=torch.long, device=image.device)
        clicks = {c: p.clicks() for c, p in prompts.items()}
        all_boxes = {c: p.box for c, p in prompts.items()}
        return refine_slices(self.model, image, seg, clicks, all_boxes, self._cache, self.inference)
