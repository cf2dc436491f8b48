"""SegVol training: every class and prompt combination decoded on one encoding per batch.

Test and predict (zoom-out-zoom-in, protocol segmenters) live in
:mod:`segfm.methods.segvol_inference`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from segfm.checkpoints.segvol import load_into, load_official
from segfm.evaluation.options import Evaluation
from segfm.inference.cache import EmbeddingCache
from segfm.inference.zoom import ZoomOptions
from segfm.losses.dice_bce import dice_bce
from segfm.methods.segvol_inference import SegVolInference
from segfm.methods.segvol_inference import prompt_kinds as _kinds
from segfm.models.segvol import build_segvol
from segfm.prompts import mask_box, sample_points
from segfm.sample import Batch
from segfm.transforms.intensity import UnitRange
from segfm.utils import schedules

#: SegVol's six supervised prompt combinations, in its order
COMBOS = ("point+text", "box+text", "text", "box", "point", "box+point")
PROMPTS = ("text", "box", "point", "box+text", "point+text", "box+point", "box+point+text")
SSL_PASSES = 6  # pseudo-mask passes per batch: even ones prompted by points, odd ones by a box


def _sentinel_points(
    mask: Tensor, blank: tuple[Tensor, Tensor], generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """The original's points of an empty target: a -1 point, U[0, 10] negatives, padding."""
    coords, labels = blank[0].clone(), blank[1].clone()
    count = int(torch.randint(0, 11, (1,), generator=generator))
    negatives = torch.nonzero(~mask.bool())
    picked = negatives[torch.randperm(len(negatives), generator=generator)[:count].to(mask.device)]
    coords[1 : 1 + len(picked)] = picked.float()
    labels[1 : 1 + len(picked)] = 0.0
    return coords, labels


@dataclass(frozen=True)
class SegVolLoss:
    """SegVol's training targets: supervised prompt combinations and the pseudo-mask term.

    The three switches give the original's behaviour where segfm departs from it on purpose
    (docs/methods/segvol.md, "Training: what matches the original").

    Args:
        prompt_combos: Supervised prompt combinations, from :data:`COMBOS`.
        max_categories: Most classes per batch (0: all).
        ssl_weight: Weight of the pseudo-mask term.
        squeeze_dice: The original's ``logits.squeeze()`` before its Dice: with a batch of one
            the Dice becomes a mean over slices. False (default): the Dice of each volume.
        pseudo_ignore: Leave pseudo-mask voxels marked -1 out of the pseudo-mask term. False:
            the original, which counted them as background.
        sentinel_prompts: Prompt empty targets (a class absent from one sample of the batch but
            present in another) as the original did, with the box ``[-1] * 6`` and 21 padding
            points, in every combination. False (default): box- and point-only combinations
            skip them, text ones decode them from text alone.
    """

    prompt_combos: tuple[str, ...] = COMBOS
    max_categories: int = 0
    ssl_weight: float = 0.1
    squeeze_dice: bool = False
    pseudo_ignore: bool = True
    sentinel_prompts: bool = False

    def __post_init__(self) -> None:
        if not self.prompt_combos or not set(self.prompt_combos) <= set(COMBOS):
            msg = f"invalid loss.prompt_combos {self.prompt_combos!r}: choose from {COMBOS}"
            raise ValueError(msg)
        for name in ("max_categories", "ssl_weight"):
            if getattr(self, name) < 0:
                msg = f"loss.{name} must be >= 0, got {getattr(self, name)}"
                raise ValueError(msg)


DEFAULT_LOSS = SegVolLoss()


class SegVol(SegVolInference):
    """SegVol (Du et al., 2023) on any data module yielding 3D volumes with class names.

    Training follows SegVol's ``train.py``: every class present in the batch (at most
    ``loss.max_categories``) is a target of every sample, decoded with each of
    ``loss.prompt_combos`` from its name (text), tight box and points (1 positive + U[0, 10]
    positives + U[0, 10] negatives), each combination adding Dice + BCE on the full-size
    logits; with ``pseudo_label`` in the batch, six passes on random pseudo-mask regions (points,
    then a box that also takes the regions > 90 % inside it) add ``loss.ssl_weight`` times their
    Dice + BCE, -1 voxels ignored.
    Fixed: the volume is encoded once per batch (SegVol re-ran the ViT per class, each with its
    own optimiser step); empty targets get no box or points (SegVol fed sentinel -1 prompts as
    real), so box/point-only combinations skip them and text combinations decode them from text;
    the text encoder stays frozen (SegVol's ``dim_align`` never trained, see
    :class:`~segfm.models.segvol.TextEncoder`). The schedule is the original's: its first
    epoch runs at a learning rate of 0 (:func:`~segfm.utils.schedules.warmup_cosine`).

    Test (:class:`~segfm.methods.segvol_inference.SegVolInference`): the evaluation harness's
    protocols, by default ``text`` (zoom-out-zoom-in,
    :func:`~segfm.inference.zoom.zoom_out_zoom_in`, of each labelled class prompted by its
    name); ``protocol: interactive`` gives the box as a 3D box and clicks as points. Predict:
    each class present in the label, prompted as ``prompt`` says (boxes and points from the
    label); without a label, the data module's class names as text; label maps (most probable
    class above ``threshold``) go to NIfTI with the source affine.

    Intensities: the network was trained on volumes min-max scaled to [0, 1] after SegVol's
    foreground clip and z-score. ``normalize: foreground`` (the default) does that on the device
    from raw intensities (NpzDataModule's 0-255, CT in HU); ``M3DSegDataModule`` already yields
    that scale (its samples are augmented after the scaling, as SegVol's), so its configs set
    ``normalize: none``.

    Args:
        arch: ``base`` (the released 181M network) or ``tiny`` (tests and demos).
        checkpoint: ``SegVol_v1.pth``, the Hugging Face ``pytorch_model.bin``, or a segfm export.
        clip_dir: Local folder of the CLIP tokenizer (SegVol's ``config/clip``); needed for text.
        roi_size: Network input ``(D, H, W)`` and sliding window (32, 256, 256 for the weights).
        patch_size: ViT patch (default: the size's own, 4x16x16 for ``base``).
        loss: Prompt combinations, classes per batch and weight of the pseudo-mask term.
        normalize: ``foreground`` clips each volume to its foreground's 0.05 / 99.95
            percentiles and scales it to [0, 1] (SegVol's preprocessing of raw intensities),
            ``minmax`` only scales, ``none`` keeps the data module's [0, 1] volumes.
        prompt: Prompts of ``predict``, from :data:`PROMPTS` (``test`` runs a protocol).
        inference: Zoom-out-zoom-in settings: zoom-in pass, window overlap, foreground
            threshold, windows encoded together.
        warmup_epochs: Linear warm-up epochs of ``lr_schedule: warmup_cosine`` (from 0, as
            SegVol: 0, 1/9, ..., 1 over 10 epochs; 0: none).
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        lr_schedule: ``warmup_cosine`` (SegVol: warm-up then cosine to 0 at the last epoch),
            ``cosine``, ``constant`` or ``multistep``.
        lr_milestones: Epochs of the ``multistep`` drops.
        lr_gamma: Factor of each drop.
        output_dir: Folder for test / predict outputs.
        export_official: Write a ``SegVol_v1.pth``-layout file beside every checkpoint.
        protocol: ``native`` (the text protocol), ``text`` or ``interactive`` (CVPR 2025).
        evaluation: Clicks of the interactive protocol, the seed of the predict points, NSD
            tolerance, predictions and overlays written.
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
        loss: SegVolLoss = DEFAULT_LOSS,
        normalize: UnitRange = "foreground",
        prompt: str = "text",
        inference: ZoomOptions | None = None,
        warmup_epochs: int = 10,
        lr: float = 1e-4,
        weight_decay: float = 1e-5,
        lr_schedule: Literal["warmup_cosine", "cosine", "constant", "multistep"] = "warmup_cosine",
        lr_milestones: tuple[int, ...] = (),
        lr_gamma: float = 0.1,
        output_dir: str | None = None,
        export_official: bool = True,
        protocol: Literal["native", "interactive", "text"] = "native",
        evaluation: Evaluation | None = None,
    ) -> None:
        checks = {
            "prompt": (prompt, prompt in PROMPTS or "+".join(sorted(_kinds(prompt))) in PROMPTS),
            "normalize": (normalize, normalize in ("foreground", "minmax", "none")),
            "warmup_epochs": (warmup_epochs, warmup_epochs >= 0),
            "roi_size": (roi_size, len(roi_size) == 3 and min(roi_size) > 0),
        }
        for name, (value, ok) in checks.items():
            if not ok:
                msg = f"invalid {name}: {value!r} (see the SegVol method's documentation)"
                raise ValueError(msg)
        self.arch = arch
        self.checkpoint = checkpoint
        self.clip_dir = clip_dir
        self.roi_size = tuple(roi_size)
        self.patch_size = None if patch_size is None else tuple(patch_size)
        self.loss_options = loss
        if isinstance(inference, dict):  # from a checkpoint's or a config's plain data
            inference = ZoomOptions(**inference)
        self.inference = inference or ZoomOptions()
        self._cache = EmbeddingCache()  # the volume being segmented: its windows' embeddings
        self.prompt, self.normalize = prompt, normalize
        self.warmup_epochs = warmup_epochs
        self.lr_schedule = lr_schedule
        self._per_slice = False  # squeeze_dice with a batch of one, set per step
        super().__init__(
            lr=lr,
            weight_decay=weight_decay,
            lr_schedule="constant" if lr_schedule == "warmup_cosine" else lr_schedule,
            lr_milestones=lr_milestones,
            lr_gamma=lr_gamma,
            output_dir=output_dir,
            export_official=export_official,
            protocol=protocol,
            evaluation=evaluation,
        )
        self.hparams["lr_schedule"] = lr_schedule
        self.hparams["loss"] = asdict(loss)  # plain data: the checkpoint loads with weights_only

    # ------------------------------------------------------------------- set-up
    def configure_models(self) -> None:
        """Build the network and load the initial weights."""
        extra = {} if self.patch_size is None else {"patch_size": self.patch_size}
        self.model = build_segvol(
            self.arch, clip_dir=self.clip_dir, roi_size=self.roi_size, **extra
        )
        if self.checkpoint:
            load_into(self.model, load_official(self.checkpoint))

    def configure_optimizers(self) -> Any:
        """AdamW; ``warmup_cosine``: linear warm-up over ``warmup_epochs``, then cosine to 0."""
        if self.lr_schedule != "warmup_cosine":
            return super().configure_optimizers()
        optimizer = super().configure_optimizers()  # the base's AdamW, without a schedule
        epochs = int(self.trainer.max_epochs or 0)
        entry = schedules.warmup_cosine(optimizer, self.warmup_epochs, epochs)
        return {"optimizer": optimizer, "lr_scheduler": entry}

    def _to_window(self, batch: Batch) -> tuple[Tensor, Tensor, Tensor | None]:
        """Image, label and pseudo label resized to ``roi_size`` if they are not already."""
        roi = self.roi_size
        image, label, pseudo = batch["image"], batch["label"], batch.get("pseudo_label")
        image = self._normalize(image)
        if tuple(image.shape[2:]) != roi:
            image = F.interpolate(image, size=roi, mode="nearest-exact")
            label = F.interpolate(label.float(), size=roi, mode="nearest-exact").long()
            if pseudo is not None:
                pseudo = F.interpolate(pseudo.float(), size=roi, mode="nearest-exact").long()
        return image, label[:, 0], None if pseudo is None else pseudo[:, 0]

    # ------------------------------------------------------------------ training
    def _targets(
        self, label: Tensor, classes: list[dict[int, Any]] | None, generator: torch.Generator
    ) -> tuple[Tensor, Tensor, list[str]]:
        """Every sample x every class present in the batch: masks ``[N, *S]``, rows, names."""
        ids = [int(c) for c in torch.unique(label) if c > 0]
        limit = self.loss_options.max_categories
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
        return self.model.postprocess(low, self.roi_size)

    def _supervised(
        self,
        embeddings: Tensor,
        masks: Tensor,
        rows: Tensor,
        names: list[str],
        generator: torch.Generator,
    ) -> Tensor:
        """Sum over the prompt combinations of Dice + BCE over all targets."""
        combos = [_kinds(c) for c in self.loss_options.prompt_combos]
        full = torch.tensor([bool(m.any()) for m in masks], device=masks.device)
        text = None
        if any("text" in k for k in combos):
            unique = sorted(set(names))
            table = self.model.embed_text(unique)
            text = table[torch.tensor([unique.index(n) for n in names], device=table.device)]
        # prompts of empty targets: SegVol's sentinels with sentinel_prompts, else never used
        sentinel = self.loss_options.sentinel_prompts
        none = masks.new_full((6,), -1.0 if sentinel else 0.0, dtype=torch.float)
        boxes = torch.stack(
            [mask_box(m) if bool(f) else none for m, f in zip(masks, full, strict=True)]
        )
        blank = (
            masks.new_full((21, 3), -1.0, dtype=torch.float),
            masks.new_full((21,), -1.0, dtype=torch.float),
        )
        pts = [
            sample_points(m, generator=generator)
            if bool(f)
            else (_sentinel_points(m, blank, generator) if sentinel else None)
            for m, f in zip(masks, full, strict=True)
        ]
        if sentinel:
            full = torch.ones_like(full)
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
                total = total + dice_bce(
                    torch.cat(logits), torch.cat(targets), per_slice=self._per_slice
                )
        return total

    @staticmethod
    def _pick_region(ids: Tensor, generator: torch.Generator) -> Tensor:
        """One pseudo region id of ``ids`` at random (SegVol's ``random.choice``)."""
        return ids[int(torch.randint(ids.numel(), (1,), generator=generator))]

    def _pseudo_target(
        self, regions: Tensor, use_box: bool, generator: torch.Generator
    ) -> tuple[Tensor, Tensor | None, tuple[Tensor, Tensor] | None] | None:
        """A random pseudo region of ``regions [*S]`` (-1 ignored) and its box or points."""
        ids = torch.unique(regions)
        ids = ids[ids >= 0]
        if ids.numel() == 0:
            return None
        target = regions == self._pick_region(ids, generator)
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
            valid = pseudo[idx] >= 0 if self.loss_options.pseudo_ignore else None
            total = total + dice_bce(logits, targets, valid=valid, per_slice=self._per_slice)
        return total

    def _step(self, batch: Batch, batch_idx: int, stage: str) -> Tensor | None:
        generator = torch.Generator()
        seed = self.evaluation.seed + batch_idx  # validation: the same points every epoch
        generator.manual_seed(int(torch.randint(2**31, (1,))) if stage == "train" else seed)
        image, label, pseudo = self._to_window(batch)
        self._per_slice = self.loss_options.squeeze_dice and image.shape[0] == 1
        masks, rows, names = self._targets(label, batch.get("classes"), generator)
        use_ssl = (
            pseudo is not None and self.loss_options.ssl_weight > 0 and bool((pseudo >= 0).any())
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
        loss = sl + self.loss_options.ssl_weight * ssl
        size = image.shape[0]
        self.log(f"{stage}_loss", loss, batch_size=size, prog_bar=True, sync_dist=stage != "train")
        self.log(f"{stage}_sl_loss", sl, batch_size=size, sync_dist=stage != "train")
        self.log(f"{stage}_ssl_loss", ssl, batch_size=size, sync_dist=stage != "train")
        return loss
