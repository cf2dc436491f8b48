"""SegVol: universal segmentation from text, boxes and points, zoom-out-zoom-in inference."""

from __future__ import annotations

import math
import time
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from segfm.checkpoints.segvol import load_into, load_official
from segfm.data.sample import Batch
from segfm.errors import DataError
from segfm.evaluation import CaseTable, dice, log_table, surface_dice
from segfm.evaluation.interactive import ClassPrompt
from segfm.evaluation.writers import write_prediction
from segfm.methods.base import BaseTask
from segfm.models.segvol import build_segvol
from segfm.models.segvol.prompts import mask_box, sample_points
from segfm.models.segvol.zoom import ClassPrompts, zoom_out_zoom_in

#: SegVol's six supervised prompt combinations, in its order
COMBOS = ("point+text", "box+text", "text", "box", "point", "box+point")
PROMPTS = ("text", "box", "point", "box+text", "point+text", "box+point", "box+point+text")
SSL_PASSES = 6  # pseudo-mask passes per batch: even ones prompted by points, odd ones by a box


def _kinds(combo: str) -> set[str]:
    return set(combo.split("+"))


def dice_bce(logits: Tensor, target: Tensor, valid: Tensor | None = None) -> Tensor:
    """SegVol's loss: ``BinaryDiceLoss`` (sigmoid, smooth 1, mean over rows) + BCE.

    Args:
        logits: ``[N, 1, *S]``.
        target: Binary ``[N, *S]``.
        valid: Voxels that count ``[N, *S]`` (pseudo masks' -1 voxels are left out), or None.
    """
    target = target.float()
    prob = torch.sigmoid(logits[:, 0])
    weight = torch.ones_like(target) if valid is None else valid.float()
    prob, target = prob * weight, target * weight
    num = (prob * target).flatten(1).sum(1)
    den = prob.flatten(1).sum(1) + target.flatten(1).sum(1) + 1.0
    bce = F.binary_cross_entropy_with_logits(logits[:, 0], target, weight=weight, reduction="sum")
    return (1 - 2 * num / den).mean() + bce / weight.sum().clamp(min=1.0)


class SegVol(BaseTask):
    """SegVol (Du et al., 2023) on any data module yielding 3D volumes with class names.

    Training follows SegVol's ``train.py``: every class present in the batch (at most
    ``max_categories``) is a target of every sample, decoded with each of ``prompt_combos`` from
    its name (text), tight box and points (1 positive + U[0, 10] positives + U[0, 10] negatives),
    each combination adding Dice + BCE on the full-size logits; with ``pseudo_label`` in the
    batch, six passes on random pseudo-mask regions (points, then a box that also takes the
    regions > 90 % inside it) add ``ssl_weight`` times their Dice + BCE, -1 voxels ignored.
    Fixed: the volume is encoded once per batch (SegVol re-ran the ViT per class, each with its
    own optimiser step); empty targets get no box or points (SegVol fed sentinel -1 prompts as
    real), so box/point-only combinations skip them and text combinations decode them from text;
    the text encoder stays frozen (SegVol's ``dim_align`` never trained, see
    :class:`~segfm.models.segvol.TextEncoder`); the warm-up schedule starts above 0.

    Test / predict (native): zoom-out-zoom-in (:func:`~segfm.models.segvol.zoom.zoom_out_zoom_in`)
    of each class present in the label, prompted as ``prompt`` says (boxes and points from the
    label); without a label, the data module's class names as text. Per-class DSC (SegVol's
    ``2TP / (|P| + |G| + 1)`` and the standard one) and NSD go to ``test_classes.csv``, label maps
    (most probable class above ``threshold``) to NIfTI with the source affine.

    Args:
        arch: ``base`` (the released 181M network) or ``tiny`` (tests and demos).
        checkpoint: ``SegVol_v1.pth``, the Hugging Face ``pytorch_model.bin``, or a segfm export.
        clip_dir: Local folder of the CLIP tokenizer (SegVol's ``config/clip``); needed for text.
        roi_size: Network input ``(D, H, W)`` and sliding window (32, 256, 256 for the weights).
        patch_size: ViT patch (default: the size's own, 4x16x16 for ``base``).
        prompt_combos: Supervised prompt combinations, from :data:`COMBOS`.
        max_categories: Most classes per training batch (0: all), drawn at random.
        ssl_weight: Weight of the pseudo-mask term (0: off).
        normalize: ``minmax`` scales each volume to [0, 1] (SegVol's input), ``none`` keeps it.
        prompt: Inference prompts, from :data:`PROMPTS`.
        zoom_in: Run the zoom-in pass after the global one.
        overlap: Overlap of the zoom-in windows.
        threshold: Foreground probability.
        sw_batch_size: Windows encoded together.
        click_seed: Seed of the inference point sampling.
        nsd_tolerance: NSD tolerance in mm.
        save_predictions: Write NIfTI label maps in test / predict.
        num_overlays: Cases with an overlay PNG in test / predict.
        warmup_epochs: Linear warm-up epochs of ``lr_schedule: warmup_cosine``.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        lr_schedule: ``warmup_cosine`` (SegVol: warm-up then cosine to 0 at the last epoch),
            ``cosine``, ``constant`` or ``multistep``.
        lr_milestones: Epochs of the ``multistep`` drops.
        lr_gamma: Factor of each drop.
        output_dir: Folder for test / predict outputs.
        export_official: Write a ``SegVol_v1.pth``-layout file beside every checkpoint.
        protocol: ``native`` (zoom-out-zoom-in), ``text`` or ``interactive`` (CVPR 2025).
        protocol_clicks: Click steps of the interactive protocol.
    """

    monitor = "val_loss"
    mode = "min"
    official_format = "segvol"

    def __init__(
        self,
        arch: Literal["base", "tiny"] = "base",
        checkpoint: str | None = None,
        clip_dir: str | None = None,
        roi_size: tuple[int, int, int] = (32, 256, 256),
        patch_size: tuple[int, int, int] | None = None,
        prompt_combos: tuple[str, ...] = COMBOS,
        max_categories: int = 0,
        ssl_weight: float = 0.1,
        normalize: Literal["minmax", "none"] = "minmax",
        prompt: str = "text",
        zoom_in: bool = True,
        overlap: float = 0.5,
        threshold: float = 0.5,
        sw_batch_size: int = 1,
        click_seed: int = 42,
        nsd_tolerance: float = 2.0,
        save_predictions: bool = True,
        num_overlays: int = 4,
        warmup_epochs: int = 10,
        lr: float = 1e-4,
        weight_decay: float = 1e-5,
        lr_schedule: Literal["warmup_cosine", "cosine", "constant", "multistep"] = "warmup_cosine",
        lr_milestones: tuple[int, ...] = (),
        lr_gamma: float = 0.1,
        output_dir: str | None = None,
        export_official: bool = True,
        protocol: Literal["native", "interactive", "text"] = "native",
        protocol_clicks: int = 5,
    ) -> None:
        checks = {
            "prompt_combos": (
                prompt_combos,
                bool(prompt_combos) and set(prompt_combos) <= set(COMBOS),
            ),
            "prompt": (prompt, prompt in PROMPTS or "+".join(sorted(_kinds(prompt))) in PROMPTS),
            "max_categories": (max_categories, max_categories >= 0),
            "ssl_weight": (ssl_weight, ssl_weight >= 0),
            "overlap": (overlap, 0 <= overlap < 1),
            "threshold": (threshold, 0 < threshold < 1),
            "sw_batch_size": (sw_batch_size, sw_batch_size >= 1),
            "warmup_epochs": (warmup_epochs, warmup_epochs >= 0),
            "roi_size": (roi_size, len(roi_size) == 3 and min(roi_size) > 0),
        }
        for name, (value, ok) in checks.items():
            if not ok:
                msg = f"invalid {name}: {value!r} (see the SegVol method's documentation)"
                raise ValueError(msg)
        super().__init__(
            lr=lr,
            weight_decay=weight_decay,
            lr_schedule="constant" if lr_schedule == "warmup_cosine" else lr_schedule,
            lr_milestones=lr_milestones,
            lr_gamma=lr_gamma,
            output_dir=output_dir,
            export_official=export_official,
            protocol=protocol,
            protocol_clicks=protocol_clicks,
        )
        self.hparams["lr_schedule"] = lr_schedule

    # ------------------------------------------------------------------- set-up
    def configure_models(self) -> None:
        """Build the network and load the initial weights."""
        h = self.hparams
        extra = {} if h["patch_size"] is None else {"patch_size": tuple(h["patch_size"])}
        self.model = build_segvol(
            h["arch"], clip_dir=h["clip_dir"], roi_size=tuple(h["roi_size"]), **extra
        )
        if h["checkpoint"]:
            load_into(self.model, load_official(h["checkpoint"]))

    def configure_metrics(self) -> None:
        """Empty inference tables."""
        self.class_table = CaseTable(["dsc_segvol", "dsc", "nsd", "seconds"])
        self.case_table = CaseTable(["dsc", "nsd"])
        self._overlays_written = 0

    def configure_optimizers(self) -> Any:
        """AdamW; ``warmup_cosine``: linear warm-up over ``warmup_epochs``, then cosine to 0."""
        if self.hparams["lr_schedule"] != "warmup_cosine":
            return super().configure_optimizers()
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(
            params, lr=self.hparams["lr"], weight_decay=self.hparams["weight_decay"]
        )
        warmup = self.hparams["warmup_epochs"]
        total = max(int(self.trainer.max_epochs or 0), warmup + 1)

        def factor(epoch: int) -> float:
            if epoch < warmup:  # SegVol's schedule starts at 0: its first epoch was lost
                return (epoch + 1) / (warmup + 1)
            return 0.5 * (1 + math.cos(math.pi * (epoch - warmup) / max(1, total - warmup)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"},
        }

    # --------------------------------------------------------------- inputs
    def _normalize(self, image: Tensor) -> Tensor:
        """SegVol's min-max scaling of each volume ``[N, 1, *S]`` to [0, 1]."""
        if self.hparams["normalize"] == "none":
            return image.float()
        flat = image.float().flatten(1)
        low = flat.min(1).values.view(-1, *[1] * (image.ndim - 1))
        span = (flat.max(1).values.view_as(low) - low).clamp(min=1e-8)
        return (image.float() - low) / span

    def _to_window(self, batch: Batch) -> tuple[Tensor, Tensor, Tensor | None]:
        """Image, label and pseudo label resized to ``roi_size`` if they are not already."""
        roi = tuple(self.hparams["roi_size"])
        image, label, pseudo = batch["image"], batch["label"], batch.get("pseudo_label")
        image = self._normalize(image)
        if tuple(image.shape[2:]) != roi:
            image = F.interpolate(image, size=roi, mode="nearest-exact")
            label = F.interpolate(label.float(), size=roi, mode="nearest-exact").long()
            if pseudo is not None:
                pseudo = F.interpolate(pseudo.float(), size=roi, mode="nearest-exact").long()
        return image, label[:, 0], None if pseudo is None else pseudo[:, 0]

    @staticmethod
    def _name(classes: dict[int, Any] | None, class_id: int) -> str:
        info = (classes or {}).get(class_id)
        return info.name if info is not None else str(class_id)

    # ------------------------------------------------------------------ training
    def _targets(
        self, label: Tensor, classes: list[dict[int, Any]] | None, generator: torch.Generator
    ) -> tuple[Tensor, Tensor, list[str]]:
        """Every sample x every class present in the batch: masks ``[N, *S]``, rows, names."""
        ids = [int(c) for c in torch.unique(label) if c > 0]
        limit = self.hparams["max_categories"]
        if limit and len(ids) > limit:
            ids = [ids[i] for i in torch.randperm(len(ids), generator=generator)[:limit]]
        rows = [(b, c) for c in ids for b in range(label.shape[0])]
        if not rows:
            return label.new_zeros((0, *label.shape[1:]), dtype=torch.bool), label.new_zeros(0), []
        masks = torch.stack([label[b] == c for b, c in rows])
        names = [self._name(classes[b] if classes else None, c) for b, c in rows]
        return masks, torch.tensor([b for b, _ in rows], device=label.device), names

    def _decode_full(
        self,
        embeddings: Tensor,
        text: Tensor | None,
        points: tuple[Tensor, Tensor] | None,
        boxes: Tensor | None,
    ) -> Tensor:
        low = self.model.decode(embeddings, text, points, boxes)
        return self.model.postprocess(low, self.hparams["roi_size"])

    def _supervised(
        self,
        embeddings: Tensor,
        masks: Tensor,
        rows: Tensor,
        names: list[str],
        generator: torch.Generator,
    ) -> Tensor:
        """Sum over the prompt combinations of Dice + BCE over all targets."""
        combos = [_kinds(c) for c in self.hparams["prompt_combos"]]
        full = torch.tensor([bool(m.any()) for m in masks], device=masks.device)
        text = None
        if any("text" in k for k in combos):
            unique = sorted(set(names))
            table = self.model.embed_text(unique)
            text = table[torch.tensor([unique.index(n) for n in names], device=table.device)]
        # prompts of empty targets are never used: zeros stand in to keep one tensor
        none = masks.new_zeros(6, dtype=torch.float)
        boxes = torch.stack(
            [mask_box(m) if bool(f) else none for m, f in zip(masks, full, strict=True)]
        )
        pts = [sample_points(m, generator=generator) for m in masks]
        blank = (masks.new_zeros((21, 3), dtype=torch.float), masks.new_full((21,), -1.0))
        coords = torch.stack([(p or blank)[0] for p in pts])
        labels = torch.stack([(p or blank)[1].float() for p in pts])
        total = embeddings.new_zeros(())
        for kinds in combos:
            logits, targets = [], []
            for subset, use in ((full, kinds), (~full, kinds & {"text"})):
                idx = torch.nonzero(subset)[:, 0]
                if idx.numel() == 0 or not use:
                    continue
                logits.append(
                    self._decode_full(
                        embeddings[rows[idx]],
                        text[idx] if "text" in use else None,  # type: ignore[index]
                        (coords[idx], labels[idx]) if "point" in use else None,
                        boxes[idx] if "box" in use else None,
                    )
                )
                targets.append(masks[idx])
            if logits:
                total = total + dice_bce(torch.cat(logits), torch.cat(targets))
        return total

    def _pseudo_target(
        self, regions: Tensor, use_box: bool, generator: torch.Generator
    ) -> tuple[Tensor, Tensor | None, tuple[Tensor, Tensor] | None] | None:
        """A random pseudo region of ``regions [*S]`` (-1 ignored) and its box or points."""
        ids = torch.unique(regions)
        ids = ids[ids >= 0]
        if ids.numel() == 0:
            return None
        region = ids[int(torch.randint(ids.numel(), (1,), generator=generator))]
        target = regions == region
        if not use_box:
            return target, None, sample_points(target, min_positive=4, generator=generator)
        box = mask_box(target)
        assert box is not None
        lo, hi = box[:3].long().tolist(), (box[3:].long() + 1).tolist()
        inside = torch.zeros_like(target)
        inside[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = True
        valid = regions >= 0
        size = torch.bincount(regions[valid], minlength=int(ids.max()) + 1)
        within = torch.bincount(regions[valid & inside], minlength=size.numel())
        kept = torch.nonzero((within > 0.9 * size) & (size > 0))[:, 0]
        return target | torch.isin(regions, kept), box, None

    def _self_supervised(
        self, embeddings: Tensor, pseudo: Tensor, generator: torch.Generator
    ) -> Tensor:
        """SegVol's pseudo-mask term: points on even passes, a box on odd ones."""
        total = embeddings.new_zeros(())
        for step in range(SSL_PASSES):
            use_box = step % 2 == 1
            drawn = [self._pseudo_target(pseudo[b], use_box, generator) for b in range(len(pseudo))]
            idx = [b for b, d in enumerate(drawn) if d is not None]
            if not idx:
                continue
            items = [drawn[b] for b in idx]
            targets = torch.stack([d[0] for d in items])  # type: ignore[index]
            boxes = torch.stack([d[1] for d in items]) if use_box else None  # type: ignore[misc,index]
            points = None
            if not use_box:
                points = (
                    torch.stack([d[2][0] for d in items]),  # type: ignore[index]
                    torch.stack([d[2][1] for d in items]),  # type: ignore[index]
                )
            logits = self._decode_full(embeddings[idx], None, points, boxes)
            total = total + dice_bce(logits, targets, valid=pseudo[idx] >= 0)
        return total

    def _step(self, batch: Batch, batch_idx: int, stage: str) -> Tensor | None:
        generator = torch.Generator()
        generator.manual_seed(
            int(torch.randint(2**31, (1,)))
            if stage == "train"
            else self.hparams["click_seed"] + batch_idx
        )
        image, label, pseudo = self._to_window(batch)
        masks, rows, names = self._targets(label, batch.get("classes"), generator)
        use_ssl = (
            pseudo is not None and self.hparams["ssl_weight"] > 0 and bool((pseudo >= 0).any())
        )
        if not len(rows) and not use_ssl:
            return None
        embeddings = self.model.encode(image)  # once per batch, shared by every class and prompt
        sl = (
            self._supervised(embeddings, masks, rows, names, generator)
            if len(rows)
            else embeddings.new_zeros(())
        )
        ssl = (
            self._self_supervised(embeddings, pseudo, generator)
            if use_ssl
            else embeddings.new_zeros(())
        )  # type: ignore[arg-type]
        loss = sl + self.hparams["ssl_weight"] * ssl
        size = image.shape[0]
        self.log(f"{stage}_loss", loss, batch_size=size, prog_bar=True, sync_dist=stage != "train")
        self.log(f"{stage}_sl_loss", sl, batch_size=size, sync_dist=stage != "train")
        self.log(f"{stage}_ssl_loss", ssl, batch_size=size, sync_dist=stage != "train")
        return loss

    # ----------------------------------------------------------------- inference
    def _class_prompts(
        self,
        label: Tensor | None,
        ids: list[int],
        names: list[str],
        generator: torch.Generator,
        case_id: str,
    ) -> list[ClassPrompts]:
        """Per class: text, and the box and points of its label as ``prompt`` asks."""
        kinds = _kinds(self.hparams["prompt"])
        if label is None and kinds != {"text"}:
            msg = (
                f"case {case_id!r} has no label to take {self.hparams['prompt']} prompts from; "
                "use --model.init_args.prompt text for volumes without ground truth"
            )
            raise DataError(msg)
        text = self.model.embed_text(names) if "text" in kinds else None
        out = []
        for k, c in enumerate(ids):
            target = None if label is None else label == c
            box = mask_box(target) if "box" in kinds and target is not None else None
            points = None
            if "point" in kinds and target is not None:
                points = sample_points(target, 3, 3, generator=generator)
            out.append(ClassPrompts(None if text is None else text[k], box, points))
        return out

    def _segment(
        self, image: Tensor, prompts: list[ClassPrompts], ids: list[int]
    ) -> tuple[Tensor, Tensor]:
        """Zoom-out-zoom-in of ``image [D, H, W]``: probabilities ``[K, *S]`` and the label map."""
        image = self._normalize(image[None, None])[0]
        logits = zoom_out_zoom_in(
            self.model,
            image,
            prompts,
            overlap=self.hparams["overlap"],
            zoom_in=self.hparams["zoom_in"],
            threshold=self.hparams["threshold"],
            sw_batch_size=self.hparams["sw_batch_size"],
        )
        prob = torch.sigmoid(logits)
        seg = torch.zeros(image.shape[1:], dtype=torch.long, device=image.device)
        if ids:
            best, index = prob.max(0)
            lookup = torch.tensor(ids, device=image.device)
            seg = torch.where(best > self.hparams["threshold"], lookup[index], seg)
        return prob, seg

    @torch.no_grad()
    def segment_text(self, image: Tensor, spacing: list[float], prompts: dict[int, str]) -> Tensor:
        """Segment the classes named by text (the text protocol's interface).

        Args:
            image: Intensities ``[D, H, W]``.
            spacing: Voxel size (unused: the network sees the volume resized to its window).
            prompts: Text per class id (put into SegVol's template).

        Returns:
            Label map ``[D, H, W]``.
        """
        ids = list(prompts)
        text = self.model.embed_text([prompts[c] for c in ids]) if ids else None
        class_prompts = [ClassPrompts(text[k]) for k in range(len(ids))]  # type: ignore[index]
        return self._segment(image, class_prompts, ids)[1]

    @torch.no_grad()
    def segment_interactive(
        self,
        image: Tensor,
        spacing: list[float],
        prompts: dict[int, ClassPrompt],
        previous: Tensor | None,
    ) -> Tensor:
        """Segment classes from their CVPR box (as a 3D box) and clicks (as points)."""
        ids, class_prompts = [], []
        for c, p in prompts.items():
            box = None
            if p.box is not None:
                b = p.box
                corners = [b["z_min"], b["z_mid_y_min"], b["z_mid_x_min"]]
                corners += [b["z_max"], b["z_mid_y_max"], b["z_mid_x_max"]]
                box = torch.tensor(corners, dtype=torch.float, device=image.device)
            clicks = p.clicks()
            points = None
            if clicks:
                coords = torch.tensor(
                    [q for q, _ in clicks], dtype=torch.float, device=image.device
                )
                labels = torch.tensor(
                    [v for _, v in clicks], dtype=torch.float, device=image.device
                )
                points = (coords, labels)
            if box is not None or points is not None:
                ids.append(c)
                class_prompts.append(ClassPrompts(None, box, points))
        return self._segment(image, class_prompts, ids)[1]

    def _case(self, batch: Batch, i: int, batch_idx: int, score: bool) -> dict[str, Any]:
        """Segment sample ``i`` of a batch (and score it against its label)."""
        meta = batch.get("meta", [{}] * (i + 1))[i]
        case_id = str(meta.get("case_id", f"case_{batch_idx}_{i}"))
        classes = (batch.get("classes") or [{}] * (i + 1))[i]
        image = batch["image"][i, 0]
        label = batch["label"][i, 0] if "label" in batch else None
        if label is not None and not bool((label > 0).any()) and not score:
            label = None  # an unlabelled predict volume
        ids = (
            [int(c) for c in torch.unique(label) if c > 0]
            if label is not None
            else sorted(c for c in classes if c > 0)
        )
        names = [self._name(classes, c) for c in ids]
        generator = torch.Generator()
        generator.manual_seed(self.hparams["click_seed"])
        started = time.perf_counter()
        prompts = self._class_prompts(label, ids, names, generator, case_id)
        prob, seg = self._segment(image, prompts, ids)
        seconds = time.perf_counter() - started
        spacing = [float(v) for v in batch["spacing"][i]]
        scores = []
        if score and label is not None:
            for k, c in enumerate(ids):
                pred, ref = prob[k] > self.hparams["threshold"], label == c
                tp = int((pred & ref).sum())
                row = {
                    "dsc_segvol": 2 * tp / (int(pred.sum()) + int(ref.sum()) + 1),
                    "dsc": dice(pred, ref),
                    "nsd": surface_dice(pred, ref, spacing, self.hparams["nsd_tolerance"]),
                }
                scores.append(row)
                self.class_table.add(
                    case=case_id,
                    class_id=c,
                    class_name=names[k],
                    prompt=self.hparams["prompt"],
                    **row,
                    seconds=seconds,
                )
        return {
            "case_id": case_id,
            "seg": seg,
            "image": image,
            "label": label,
            "meta": meta,
            "spacing": spacing,
            "scores": scores,
        }

    def native_test_step(self, batch: Batch, batch_idx: int) -> None:
        """Zoom-out-zoom-in of every labelled class of each volume, scored per class."""
        for i in range(batch["image"].shape[0]):
            r = self._case(batch, i, batch_idx, score=True)
            if r["scores"]:
                dsc = float(np.mean([s["dsc"] for s in r["scores"]]))
                nsd = float(np.mean([s["nsd"] for s in r["scores"]]))
                self.case_table.add(case=r["case_id"], classes=len(r["scores"]), dsc=dsc, nsd=nsd)
                self.log("test_dsc", dsc, batch_size=1, on_epoch=True, sync_dist=True)
                self.log("test_nsd", nsd, batch_size=1, on_epoch=True, sync_dist=True)
            self._write_outputs(r)

    def predict_step(self, batch: Batch, batch_idx: int) -> list[Tensor]:
        """Label maps of each volume (prompts from its label, or text without one)."""
        out = []
        for i in range(batch["image"].shape[0]):
            r = self._case(batch, i, batch_idx, score=False)
            self._write_outputs(r)
            out.append(r["seg"].cpu())
        return out

    def _write_outputs(self, r: dict[str, Any]) -> None:
        if self.hparams["save_predictions"]:
            seg = r["seg"].cpu().numpy()
            write_prediction(
                self.output_dir / "predictions", r["case_id"], seg, r["meta"], r["spacing"]
            )
        if self._overlays_written < self.hparams["num_overlays"]:
            mask = r["label"] if r["label"] is not None else r["seg"]
            if bool((mask > 0).any()):
                z = int((mask > 0).flatten(1).sum(1).argmax())
                ref = None if r["label"] is None else r["label"][z].cpu().numpy()
                name = f"{r['case_id'].replace('/', '_')}_z{z:03d}"
                self.save_overlay(name, r["image"][z].cpu().numpy(), r["seg"][z].cpu().numpy(), ref)
                self._overlays_written += 1

    def on_native_test_epoch_start(self) -> None:
        """Start empty tables."""
        self.configure_metrics()

    def on_predict_epoch_start(self) -> None:
        """Check the output folder and start counting overlays."""
        super().on_predict_epoch_start()
        self.configure_metrics()

    def on_native_test_epoch_end(self) -> None:
        """Gather every rank's rows; rank zero writes the tables."""
        for table in (self.class_table, self.case_table):
            table.rows = self.gather_rows(table.rows)
        if self.trainer.is_global_zero and len(self.class_table):
            out = self.output_dir
            self.class_table.write(out, "test_classes")
            self.case_table.write(out, "test_cases")
            rows = [[r["case"], r["class_name"], r["dsc"], r["nsd"]] for r in self.class_table.rows]
            log_table(self.trainer.loggers, "test/classes", ["case", "class", "dsc", "nsd"], rows)
            rank_zero_info(f"\nSegVol per class ({out}):\n{self.class_table.to_markdown()}")
