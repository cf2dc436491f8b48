"""MedSAM: SAM fine-tuned with box prompts on 2D slices, applied to volumes by slice propagation."""

from __future__ import annotations

import weakref
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from monai.losses import DiceLoss
from torch import Tensor, nn

from segfm.checkpoints.sam import load_into
from segfm.sample import Batch
from segfm.evaluation import CaseTable, case_scores, log_table
from segfm.evaluation.interactive import ClassPrompt
from segfm.evaluation.writers import write_prediction
from segfm.methods.base import BaseTask
from segfm.models import build_sam
from segfm.prompts import expand_boxes, jitter_boxes, masks_to_boxes, volume_boxes


class MedSAM(BaseTask):
    """MedSAM (Ma et al., Nature Communications 2024) on any data module yielding 2D slices.

    Training (``fit``): for each slice, ``targets_per_image`` labels present in it become binary
    targets; each gets its tight box with every side pushed out by 0..``box_shift`` pixels. The
    image is encoded once and every box decoded on that embedding; the single-mask low-res logits
    are upsampled to the input size and scored with Dice (sigmoid, squared) + BCE, 1:1. The prompt
    encoder is frozen.

    Inference (``test`` / ``predict``) on volumes ``[1, D, H, W]``: per class, the middle slice is
    segmented from its box; the neighbouring slices are then segmented one after the other, each
    from the box of the previous slice's mask grown by ``propagation_margin`` pixels (the middle
    box when the previous mask is empty), within the class's slice range.

    Args:
        arch: SAM size (``vit_b`` is the published MedSAM; ``tiny`` for tests and the demo).
        image_size: Network input size; defaults to the architecture's (1024, or 128 for tiny).
        checkpoint: Initial weights: an official SAM file, MedSAM's ``{"model": ...}`` checkpoint
            or a plain state dict.
        freeze_image_encoder: Also freeze the image encoder (decoder-only fine-tuning).
        box_shift: Largest outward shift of each box side during training, in input pixels.
        targets_per_image: Labels (and boxes) sampled per training slice.
        mask_threshold: Probability above which a pixel is foreground.
        propagation_margin: Pixels added on each side of the previous slice's box.
        nsd_tolerance: NSD tolerance in mm.
        encode_batch_size: Slices encoded together during volume inference.
        save_predictions: Write predicted volumes as NIfTI during test / predict.
        num_overlays: Cases for which an overlay PNG is written during test / predict.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        lr_schedule: ``constant`` (the published recipe) or ``cosine``.
        output_dir: Folder for test/predict outputs (default: the run's log folder).
        export_official: Write an official SAM file beside every checkpoint.
        protocol: ``native`` tests with the method's own inference; ``interactive`` runs the CVPR
            2025 box-then-clicks protocol (:mod:`segfm.evaluation.harness`).
        protocol_clicks: Click steps of the interactive protocol.
    """

    monitor = "val_dice"
    mode = "max"
    official_format = "sam"

    def __init__(
        self,
        arch: Literal["vit_b", "vit_l", "vit_h", "tiny"] = "vit_b",
        image_size: int | None = None,
        checkpoint: str | None = None,
        freeze_image_encoder: bool = False,
        box_shift: int = 20,
        targets_per_image: int = 1,
        mask_threshold: float = 0.5,
        propagation_margin: int = 3,
        nsd_tolerance: float = 2.0,
        encode_batch_size: int = 8,
        save_predictions: bool = True,
        num_overlays: int = 4,
        lr: float = 1e-4,
        weight_decay: float = 0.01,
        lr_schedule: Literal["constant", "cosine"] = "constant",
        output_dir: str | None = None,
        export_official: bool = True,
        protocol: Literal["native", "interactive", "text"] = "native",
        protocol_clicks: int = 5,
    ) -> None:
        if box_shift < 0:
            msg = f"box_shift must be >= 0, got {box_shift}"
            raise ValueError(msg)
        if targets_per_image < 1:
            msg = f"targets_per_image must be >= 1, got {targets_per_image}"
            raise ValueError(msg)
        if not 0.0 < mask_threshold < 1.0:
            msg = f"mask_threshold must be in (0, 1), got {mask_threshold}"
            raise ValueError(msg)
        super().__init__(
            lr=lr,
            weight_decay=weight_decay,
            lr_schedule=lr_schedule,
            output_dir=output_dir,
            export_official=export_official,
            protocol=protocol,
            protocol_clicks=protocol_clicks,
        )

    def configure_models(self) -> None:
        """Build SAM, load the initial weights and freeze the prompt encoder."""
        overrides = (
            {} if self.hparams["image_size"] is None else {"image_size": self.hparams["image_size"]}
        )
        self.model = build_sam(self.hparams["arch"], **overrides)
        if self.hparams["checkpoint"]:
            load_into(self.model, self.hparams["checkpoint"])
        self.model.prompt_encoder.requires_grad_(False)
        if self.hparams["freeze_image_encoder"]:
            self.model.image_encoder.requires_grad_(False)

    def configure_losses(self) -> None:
        """Dice (sigmoid, squared denominator) and BCE on logits, summed 1:1."""
        self.dice_loss = DiceLoss(sigmoid=True, squared_pred=True, reduction="mean")
        self.bce_loss = nn.BCEWithLogitsLoss(reduction="mean")

    def configure_metrics(self) -> None:
        """Prepare the test tables."""
        self.case_table = CaseTable(["dsc", "nsd"])
        self.class_table = CaseTable(["dsc", "nsd"])
        self._overlays_written = 0

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
            order = torch.randperm(present.numel(), generator=generator)[
                : self.hparams["targets_per_image"]
            ]
            for c in present[order.to(present.device)]:
                targets.append(label[b] == c)
                index.append(b)
        if not targets:
            msg = (
                "no labelled pixel in this batch; the data module must yield slices with foreground"
            )
            raise ValueError(msg)
        masks = torch.stack(targets)
        boxes = jitter_boxes(
            masks_to_boxes(masks), self.hparams["box_shift"], tuple(masks.shape[-2:]), generator
        )
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
        pred = logits > 0
        inter = (pred & target.bool()).flatten(1).sum(1)
        dsc = (2 * inter / (pred.flatten(1).sum(1) + target.flatten(1).sum(1)).clamp(min=1)).mean()
        n = image.shape[0]
        self.log(f"{stage}_loss", loss, batch_size=n, prog_bar=True, sync_dist=stage != "train")
        self.log(
            f"{stage}_dice",
            dsc,
            batch_size=n,
            prog_bar=stage != "train",
            sync_dist=stage != "train",
        )
        return loss

    # ----------------------------------------------------------------- inference
    def preprocess_slices(self, slices: Tensor) -> Tensor:
        """MedSAM's 2D input: 3 channels, bicubic resize to the network size, min-max to [0, 1].

        Args:
            slices: Grey slices ``[N, H, W]``.

        Returns:
            Network input ``[N, 3, S, S]``.
        """
        size = self.model.image_size
        x = F.interpolate(
            slices[:, None].float(),
            size=(size, size),
            mode="bicubic",
            antialias=True,
            align_corners=False,
        )
        lo = x.amin(dim=(1, 2, 3), keepdim=True)
        hi = x.amax(dim=(1, 2, 3), keepdim=True)
        x = (x - lo) / (hi - lo).clamp(min=1e-8)
        return x.expand(-1, 3, -1, -1)

    @torch.no_grad()
    def segment_volume(self, volume: Tensor, boxes: dict[int, dict[str, int]]) -> Tensor:
        """Segment classes of a volume from their 3D boxes by slice propagation.

        Every class starts on its middle slice and propagates up and down; the fronts of all
        classes and both directions advance together, so each step is one decoder call.

        Args:
            volume: Grey volume ``[D, H, W]``.
            boxes: Per class, ``z_min``, ``z_max``, ``z_mid`` and the 2D box on ``z_mid``
                (see :func:`segfm.prompts.volume_boxes`).

        Returns:
            Label volume ``[D, H, W]`` (int64); overlaps go to the most probable class.
        """
        depth, h, w = volume.shape
        needed = sorted({z for b in boxes.values() for z in range(b["z_min"], b["z_max"] + 1)})
        cache = self._encode_slices(volume, needed)
        threshold, margin = self.hparams["mask_threshold"], self.hparams["propagation_margin"]
        best = torch.zeros((depth, h, w), device=volume.device)
        seg = torch.zeros((depth, h, w), dtype=torch.long, device=volume.device)
        mid_boxes = {
            c: torch.tensor(
                [b["z_mid_x_min"], b["z_mid_y_min"], b["z_mid_x_max"], b["z_mid_y_max"]],
                dtype=torch.float32,
                device=volume.device,
            )
            for c, b in boxes.items()
        }
        # a front: [class, slice, direction, previous probability map or None]
        fronts: list[list[Any]] = [[c, b["z_mid"], 0, None] for c, b in boxes.items()]
        while fronts:
            prompts = []
            for c, _, _, prev in fronts:
                if prev is not None and (prev > threshold).any():
                    prompts.append(
                        expand_boxes(masks_to_boxes((prev > threshold)[None]), margin, (h, w))[0]
                    )
                else:
                    prompts.append(mid_boxes[c])
            embeddings = torch.cat([cache[z] for _, z, _, _ in fronts])
            probs = self._decode_slices(embeddings, torch.stack(prompts), (h, w))
            advanced = []
            for (c, z, step, _), prob in zip(fronts, probs, strict=True):
                win = (prob > threshold) & (prob > best[z])
                seg[z][win] = c
                best[z][win] = prob[win]
                for nxt in (1, -1) if step == 0 else (step,):
                    if boxes[c]["z_min"] <= z + nxt <= boxes[c]["z_max"]:
                        advanced.append([c, z + nxt, nxt, prob])
            fronts = advanced
        return seg

    def _encode_slices(self, volume: Tensor, zs: list[int]) -> dict[int, Tensor]:
        """Embeddings ``[1, C, g, g]`` of slices ``zs``, ``encode_batch_size`` at a time.

        The embeddings of the last volume are kept (per version of the volume and of the
        encoder weights), so the interactive protocol's click steps, which come back to the same
        volume, encode only slices not seen before.
        """
        weights = (id(self.model), sum(p._version for p in self.model.parameters()))
        # inference tensors (Lightning's test loop) have no version counter
        key = (0 if volume.is_inference() else volume._version, weights)
        cached = getattr(self, "_slice_cache", None)
        # kept for one tensor object (a weak reference: a new volume never matches a freed one)
        if cached is None or cached[0]() is not volume or cached[1] != key:
            cached = self._slice_cache = (weakref.ref(volume), key, {})
        slices: dict[int, Tensor] = cached[2]
        missing = [z for z in zs if z not in slices]
        step = self.hparams["encode_batch_size"]
        for i in range(0, len(missing), step):
            chunk = missing[i : i + step]
            emb = self.model.encode(self.preprocess_slices(volume[chunk]))
            slices.update({z: emb[j : j + 1] for j, z in enumerate(chunk)})
        return {z: slices[z] for z in zs}

    def _decode_slices(
        self,
        embeddings: Tensor,
        boxes: Tensor | None,
        size: tuple[int, int],
        points: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        """Probability maps ``[N, H, W]`` of N slice embeddings from boxes and/or points.

        Args:
            embeddings: ``[N, C, g, g]``.
            boxes: ``[N, 4]`` (``x0, y0, x1, y1``) in original pixels, or None.
            size: Original slice size ``(H, W)``.
            points: Coordinates ``[N, P, 2]`` (``x, y``) in original pixels and labels ``[N, P]``.
        """
        h, w = size
        scale = torch.tensor(
            [self.model.image_size / w, self.model.image_size / h], device=embeddings.device
        )
        logits, _ = self.model.decode(
            embeddings,
            points=None if points is None else (points[0] * scale, points[1]),
            boxes=None if boxes is None else boxes * scale.repeat(2),
            multimask_output=False,
        )
        logits = F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False)
        return torch.sigmoid(logits)[:, 0].float()  # float32 under bf16 autocast too

    @torch.no_grad()
    def segment_interactive(
        self,
        image: Tensor,
        spacing: list[float],
        prompts: dict[int, ClassPrompt],
        previous: Tensor | None,
    ) -> Tensor:
        """Segment classes from boxes, then refine them with clicks (the protocol's interface).

        With boxes and no previous prediction, every class is segmented by slice propagation
        (:meth:`segment_volume`). Clicks then act on their own slices: each slice with clicks
        of a class is decoded again from the class's box on that slice (the previous mask's
        box, or the 3D box's middle-slice box inside its slice range) and the slice's clicks as
        SAM point prompts, and the class's mask on that slice is replaced.

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
            seg = self.segment_volume(image, boxes)  # type: ignore[arg-type]
        else:
            seg = torch.zeros(image.shape, dtype=torch.long, device=image.device)
        h, w = image.shape[1:]
        threshold, margin = self.hparams["mask_threshold"], self.hparams["propagation_margin"]
        for c, prompt in prompts.items():
            by_slice: dict[int, list[tuple[tuple[int, ...], int]]] = {}
            for point, label in prompt.clicks():
                by_slice.setdefault(int(point[0]), []).append((tuple(point), label))
            for z, clicks in sorted(by_slice.items()):
                mask = seg[z] == c
                box = None
                if mask.any():
                    box = expand_boxes(masks_to_boxes(mask[None]), margin, (h, w))[0]
                elif prompt.box is not None and prompt.box["z_min"] <= z <= prompt.box["z_max"]:
                    b = prompt.box
                    corners = [
                        b["z_mid_x_min"],
                        b["z_mid_y_min"],
                        b["z_mid_x_max"],
                        b["z_mid_y_max"],
                    ]
                    box = torch.tensor(corners, dtype=torch.float32, device=image.device)
                coords = torch.tensor(
                    [[p[2], p[1]] for p, _ in clicks], dtype=torch.float32, device=image.device
                )
                labels = torch.tensor([lab for _, lab in clicks], device=image.device)
                embedding = self._encode_slices(image, [z])[z]
                prob = self._decode_slices(
                    embedding,
                    None if box is None else box[None],
                    (h, w),
                    (coords[None], labels[None]),
                )[0]
                seg[z][mask] = 0
                seg[z][(prob > threshold) & (seg[z] == 0)] = c
        return seg

    def _infer_batch(self, batch: Batch) -> list[dict[str, Any]]:
        if batch["image"].ndim != 5:
            msg = (
                f"MedSAM test/predict works on volumes [B, C, D, H, W], got "
                f"{tuple(batch['image'].shape)}; "
                "use a data module whose test split yields volumes"
            )
            raise ValueError(msg)
        results = []
        for i in range(batch["image"].shape[0]):
            volume, label = batch["image"][i, 0], batch["label"][i, 0]
            class_ids = [int(c) for c in torch.unique(label) if c > 0]
            boxes = volume_boxes(label, class_ids)
            seg = self.segment_volume(volume, boxes)
            spacing = [float(v) for v in batch["spacing"][i]]
            results.append(
                {"seg": seg, "label": label, "volume": volume, "boxes": boxes, "index": i}
                | {"spacing": spacing}
            )
        return results

    def native_test_step(self, batch: Batch, batch_idx: int) -> None:
        """Segment each volume from boxes of its reference, score it, write outputs."""
        for r in self._infer_batch(batch):
            i = r["index"]
            meta, classes = batch["meta"][i], batch.get("classes", [{}] * (i + 1))[i]
            seg, label = r["seg"].cpu().numpy(), r["label"].cpu().numpy()
            scores = case_scores(
                seg, label, r["spacing"], list(r["boxes"]), self.hparams["nsd_tolerance"]
            )
            case_id = meta.get("case_id", f"case_{batch_idx}_{i}")
            for c, s in scores.items():
                name = classes[c].name if c in classes else str(c)
                self.class_table.add(case=case_id, class_id=c, class_name=name, **s)
            dsc = float(np.mean([s["dsc"] for s in scores.values()])) if scores else float("nan")
            nsd = float(np.mean([s["nsd"] for s in scores.values()])) if scores else float("nan")
            self.case_table.add(case=case_id, classes=len(scores), dsc=dsc, nsd=nsd)
            self.log("test_dsc", dsc, batch_size=1, on_epoch=True, sync_dist=True)
            self.log("test_nsd", nsd, batch_size=1, on_epoch=True, sync_dist=True)
            self._write_outputs(case_id, r, meta)

    def predict_step(self, batch: Batch, batch_idx: int) -> list[Tensor]:
        """Segment each volume from boxes of its label; returns the label volumes."""
        out = []
        for r in self._infer_batch(batch):
            meta = batch["meta"][r["index"]]
            self._write_outputs(meta.get("case_id", f"case_{batch_idx}_{r['index']}"), r, meta)
            out.append(r["seg"].cpu())
        return out

    def _write_outputs(self, case_id: str, result: dict[str, Any], meta: dict[str, Any]) -> None:
        seg = result["seg"].cpu().numpy()
        seg = seg.astype(np.uint8 if seg.max() < 256 else np.uint16)
        if self.hparams["save_predictions"]:
            write_prediction(self.output_dir / "predictions", case_id, seg, meta, result["spacing"])
        if self._overlays_written < self.hparams["num_overlays"] and result["boxes"]:
            largest = max(
                result["boxes"].values(),
                key=lambda b: (
                    (b["z_mid_x_max"] - b["z_mid_x_min"]) * (b["z_mid_y_max"] - b["z_mid_y_min"])
                ),
            )
            z = largest["z_mid"]
            image, reference = result["volume"][z].cpu().numpy(), result["label"][z].cpu().numpy()
            self.save_overlay(f"{case_id}_z{z:03d}", image, seg[z], reference)
            self._overlays_written += 1

    def on_native_test_epoch_start(self) -> None:
        """Start empty tables."""
        self.configure_metrics()

    def on_predict_epoch_start(self) -> None:
        """Check the output folder and start counting overlays."""
        super().on_predict_epoch_start()
        self._overlays_written = 0

    def on_native_test_epoch_end(self) -> None:
        """Gather the per-case and per-class tables of all ranks; rank zero writes them."""
        self.case_table.rows = self.gather_rows(self.case_table.rows)
        self.class_table.rows = self.gather_rows(self.class_table.rows)
        if self.trainer.is_global_zero and len(self.case_table):
            self._write_tables()

    def _write_tables(self) -> None:
        self.class_table.write(self.output_dir, "test_classes")
        self.case_table.write(self.output_dir, "test_cases")
        rows = [[r["case"], r["class_name"], r["dsc"], r["nsd"]] for r in self.class_table.rows]
        log_table(self.trainer.loggers, "test/classes", ["case", "class", "dsc", "nsd"], rows)
        rank_zero_info(f"\nPer-case scores ({self.output_dir}):\n" + self.case_table.to_markdown())
