"""SAM-Med3D: a 3D SAM prompted with clicks, refined click after click."""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from monai.losses import DiceCELoss
from torch import Tensor

from segfm.checkpoints.sam import load_into
from segfm.checkpoints.sam_med3d import load_official
from segfm.data.io.clicks_file import ClassClicks, read_clicks_file
from segfm.data.io.geometry import map_points
from segfm.sample import Batch
from segfm.errors import DataError
from segfm.evaluation import CaseTable, dice, log_table, surface_dice
from segfm.evaluation.interactive import ClassPrompt
from segfm.evaluation.writers import write_prediction
from segfm.methods.base import BaseTask
from segfm.methods.roi import crop_padded, inside, paste_add, region_windows, windows_box
from segfm.models import build_sam
from segfm.prompts import center_error_click, sample_error_clicks

# a click: voxel indices (z, y, x) on the grid the method sees, and 1 (foreground) or 0
Click = tuple[tuple[int, int, int], int]


def _click_region(clicks: list[Click]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The bounding box ``[lo, hi)`` of the positive clicks (of all clicks if none is positive)."""
    points = np.asarray([p for p, label in clicks if label == 1] or [p for p, _ in clicks])
    return tuple(int(v) for v in points.min(0)), tuple(int(v) + 1 for v in points.max(0))


# NSD is reported as 0 at or below this DSC (MedSAM's and the CVPR 2025 rule)
NSD_MIN_DICE = 0.2


class SAMMed3D(BaseTask):
    """SAM-Med3D (Wang et al., 2023) on any data module yielding 3D crops and volumes.

    Training (``fit``) follows SAM-Med3D's ``train.py``: in each crop one class present (at
    least ``min_target_voxels`` voxels) becomes the binary target; the crop is z-scored over its
    voxels > 0, encoded once, then decoded ``train_iterations`` times: each step adds one click
    drawn uniformly from the current error region (positive in a false negative, negative in a
    false positive) and feeds back the previous step's low-res logits as the mask prompt; at one
    random step in 2..9 and at the last, the mask prompt is given alone. Every step's logits,
    upsampled to the crop, add a DiceCE loss. Fixed bugs of the original: the next click comes
    from probabilities > ``mask_threshold`` (not raw logits > 0.5), and a step without any error
    clicks inside the target instead of crashing.

    Inference (``test`` / ``predict``) on whole volumes ``[1, D, H, W]``: per class, cubes of
    the network size are centred on the target (or several overlapping cubes cover it when it
    is larger), and ``num_clicks`` clicks are added one at a time, each at the centre of the
    largest error component (the CVPR 2025 rule; ``click_rule="random"`` draws as in training).
    Clicks accumulate; the prediction after every click is scored (DSC, NSD) into the per-click
    table. The original reported the best click of each case; here the last click's score is the
    result and every click is kept. With ``clicks_file`` the clicks come from the user (no
    ground truth needed). Predictions are resampled back onto the source image grid and written
    as NIfTI with the source affine.

    The network sees volumes in ``(x, y, z)`` axis order (TorchIO's, in which the released
    weights were trained); the data modules' ``(z, y, x)`` arrays are transposed on the way in
    and out.

    Args:
        arch: ``sam_med3d`` (the released 100M network) or ``tiny`` (tests and demos).
        image_size: Side of the cube the network sees (128 for the released weights).
        checkpoint: Initial weights: ``sam_med3d_turbo.pth`` (official layout), a plain state
            dict or a segfm export.
        normalize: ``zscore`` each crop over its voxels > 0 (SAM-Med3D), or ``none`` when the
            data module already normalised (e.g. the LIDC recipe's [0, 1] HU window).
        train_iterations: Decoder steps per training crop.
        mask_only_steps: Give the mask prompt alone at one random step and at the last.
        lambda_ce: Weight of the cross-entropy term of DiceCE (0 reproduces the original, whose
            MONAI version dropped it for one channel).
        detach_previous: Detach the previous logits fed back as the mask prompt (saves memory;
            the original back-propagates through them).
        min_target_voxels: Smallest class (voxels in the crop) used as a training target.
        num_clicks: Clicks per class at inference.
        click_rule: ``center`` of the largest error component, or ``random`` error voxel.
        click_seed: Seed of the click rules' tie-breaking / sampling at inference.
        mask_threshold: Probability above which a voxel is foreground.
        window_overlap: Least overlap of the cubes that cover a target larger than one cube.
        nsd_tolerance: NSD tolerance in mm; NSD is 0 when the DSC is at most 0.2.
        clicks_file: JSON of user clicks per case and class (see
            :mod:`segfm.data.io.clicks_file`) for ``predict`` without ground truth.
        save_predictions: Write predicted volumes as NIfTI during test / predict.
        num_overlays: Cases for which an overlay PNG is written during test / predict.
        lr: AdamW learning rate of the image encoder.
        decoder_lr_scale: Factor of ``lr`` for the prompt encoder and mask decoder (0.1 in the
            original).
        weight_decay: AdamW weight decay.
        lr_schedule: ``multistep`` (the original), ``cosine`` or ``constant``.
        lr_milestones: Epochs of the ``multistep`` drops.
        lr_gamma: Factor of each drop.
        output_dir: Folder for test/predict outputs (default: the run's log folder).
        export_official: Write an official SAM-Med3D file beside every checkpoint.
        protocol: ``native`` tests with the N-click inference above; ``interactive`` runs the
            CVPR 2025 box-then-clicks protocol (:mod:`segfm.evaluation.harness`).
        protocol_clicks: Click steps of the interactive protocol.
    """

    monitor = "val_dice"
    mode = "max"
    official_format = "sam_med3d"

    def __init__(
        self,
        arch: Literal["sam_med3d", "tiny"] = "sam_med3d",
        image_size: int = 128,
        checkpoint: str | None = None,
        normalize: Literal["zscore", "none"] = "zscore",
        train_iterations: int = 11,
        mask_only_steps: bool = True,
        lambda_ce: float = 1.0,
        detach_previous: bool = False,
        min_target_voxels: int = 10,
        num_clicks: int = 5,
        click_rule: Literal["center", "random"] = "center",
        click_seed: int = 42,
        mask_threshold: float = 0.5,
        window_overlap: float = 0.25,
        nsd_tolerance: float = 2.0,
        clicks_file: str | None = None,
        save_predictions: bool = True,
        num_overlays: int = 4,
        lr: float = 8e-5,
        decoder_lr_scale: float = 0.1,
        weight_decay: float = 0.1,
        lr_schedule: Literal["constant", "cosine", "multistep"] = "multistep",
        lr_milestones: tuple[int, ...] = (120, 180),
        lr_gamma: float = 0.1,
        output_dir: str | None = None,
        export_official: bool = True,
        protocol: Literal["native", "interactive", "text"] = "native",
        protocol_clicks: int = 5,
    ) -> None:
        checks = {
            "train_iterations must be >= 1": train_iterations >= 1,
            "num_clicks must be >= 1 (the first click is what prompts the model)": num_clicks >= 1,
            "mask_threshold must be in (0, 1)": 0.0 < mask_threshold < 1.0,
            "window_overlap must be in [0, 1)": 0.0 <= window_overlap < 1.0,
            "min_target_voxels must be >= 1": min_target_voxels >= 1,
            "decoder_lr_scale must be > 0": decoder_lr_scale > 0,
            "lambda_ce must be >= 0": lambda_ce >= 0,
        }
        for message, ok in checks.items():
            if not ok:
                msg = f"{message}; check the model's init_args"
                raise ValueError(msg)
        super().__init__(
            lr=lr,
            weight_decay=weight_decay,
            lr_schedule=lr_schedule,
            lr_milestones=lr_milestones,
            lr_gamma=lr_gamma,
            output_dir=output_dir,
            export_official=export_official,
            protocol=protocol,
            protocol_clicks=protocol_clicks,
        )

    # ------------------------------------------------------------------- set-up
    def configure_models(self) -> None:
        """Build the 3D SAM and load the initial weights."""
        size = self.hparams["image_size"]
        if self.hparams["arch"] == "tiny":
            self.model = build_sam("tiny", spatial_dims=3, image_size=size)
        else:
            self.model = build_sam(self.hparams["arch"], image_size=size)
        if self.hparams["checkpoint"]:
            load_into(self.model, load_official(self.hparams["checkpoint"]))

    def configure_losses(self) -> None:
        """DiceCE on logits (sigmoid, squared denominator), as SAM-Med3D."""
        self.loss = DiceCELoss(
            sigmoid=True, squared_pred=True, reduction="mean", lambda_ce=self.hparams["lambda_ce"]
        )

    def configure_metrics(self) -> None:
        """Prepare the inference tables."""
        self.click_table = CaseTable(["dsc", "nsd", "seconds"])
        self.class_table = CaseTable(["dsc", "nsd", "dsc_first", "seconds"])
        self.case_table = CaseTable(["dsc", "nsd"])
        self._overlays_written = 0
        self._clicks: dict[str, dict[str, ClassClicks]] | None = None

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Image encoder at ``lr``; prompt encoder and mask decoder at ``decoder_lr_scale * lr``."""
        low = self.hparams["lr"] * self.hparams["decoder_lr_scale"]
        rest = [*self.model.prompt_encoder.parameters(), *self.model.mask_decoder.parameters()]
        return [
            {"params": [p for p in self.model.image_encoder.parameters() if p.requires_grad]},
            {"params": [p for p in rest if p.requires_grad], "lr": low},
        ]

    # ----------------------------------------------------------- network I/O
    @staticmethod
    def _to_net(x: Tensor) -> Tensor:
        """``[N, C, z, y, x]`` to the network's ``[N, C, x, y, z]``, and back (an involution)."""
        return x.permute(0, 1, 4, 3, 2)

    def normalize_crops(self, crops: Tensor) -> Tensor:
        """Z-score every crop ``[N, 1, *S]`` over its voxels > 0 (all voxels if fewer than 2)."""
        if self.hparams["normalize"] == "none":
            return crops
        x = crops.float().flatten(1)
        mask = x > 0
        few = mask.sum(1, keepdim=True) < 2
        mask = mask | few
        count = mask.sum(1, keepdim=True)
        mean = (x * mask).sum(1, keepdim=True) / count
        var = (((x - mean) * mask) ** 2).sum(1, keepdim=True) / (count - 1).clamp(min=1)
        out = (x - mean) / var.sqrt().clamp(min=1e-8)
        return out.view_as(crops)

    def _decode(
        self, embeddings: Tensor, coords: Tensor | None, labels: Tensor | None, low: Tensor
    ) -> Tensor:
        """Low-res logits (network orientation) from clicks in ``(z, y, x)`` and a mask prompt."""
        points = None if coords is None else (coords.flip(-1).float(), labels)
        logits, _ = self.model.decode(embeddings, points=points, masks=low, multimask_output=False)
        return logits

    def _full(self, low: Tensor) -> Tensor:
        """Low-res logits to crop-size logits ``[N, 1, z, y, x]``."""
        return self._to_net(self.model.postprocess(low, self.model.image_size))

    def _empty_low(self, n: int, device: torch.device) -> Tensor:
        """The first mask prompt: zeros, as the original feeds in training and inference."""
        side = 4 * self.model.embedding_size
        return torch.zeros((n, 1, side, side, side), device=device)

    # ------------------------------------------------------------------ training
    def sample_targets(
        self, label: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """One binary target per crop: a random class with at least ``min_target_voxels``.

        Args:
            label: Label maps ``[B, *S]``.
            generator: CPU random generator (validation uses a seeded one).

        Returns:
            Targets ``[N, *S]`` (bool) and the index ``[N]`` of their crops; crops without a
            class large enough are left out (``N`` may be 0).
        """
        targets, index = [], []
        for b in range(label.shape[0]):
            ids, counts = torch.unique(label[b], return_counts=True)
            ids = ids[(ids > 0) & (counts >= self.hparams["min_target_voxels"])]
            if ids.numel() == 0:
                continue
            pick = int(torch.randint(ids.numel(), (1,), generator=generator))
            targets.append(label[b] == ids[pick])
            index.append(b)
        if not targets:
            return label.new_zeros((0, *label.shape[1:]), dtype=torch.bool), label.new_zeros(0)
        return torch.stack(targets), torch.tensor(index, device=label.device)

    def click_loop(
        self, embeddings: Tensor, targets: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """SAM-Med3D's training interaction: clicks from the error region, logits fed back.

        Args:
            embeddings: Image embeddings ``[N, C, *g]`` (one per target).
            targets: Binary targets ``[N, *S]``.
            generator: CPU random generator for the clicks and the mask-only step.

        Returns:
            The summed loss over the steps and the last step's logits ``[N, 1, *S]``.
        """
        steps = self.hparams["train_iterations"]
        mask_only: set[int] = set()
        if self.hparams["mask_only_steps"]:
            mask_only = {steps - 1, int(torch.randint(2, 9, (1,), generator=generator))}
        low = self._empty_low(targets.shape[0], targets.device)
        pred = torch.zeros_like(targets)
        target = targets[:, None].float()
        total = targets.new_zeros((), dtype=torch.float32)
        logits = target
        for step in range(steps):
            coords, labels = sample_error_clicks(pred, targets, generator=generator)
            if step in mask_only:
                low = self._decode(embeddings, None, None, low)
            else:
                low = self._decode(embeddings, coords[:, None], labels[:, None], low)
            logits = self._full(low)
            total = total + self.loss(logits, target)
            pred = torch.sigmoid(logits[:, 0].detach()) > self.hparams["mask_threshold"]
            if self.hparams["detach_previous"]:
                low = low.detach()
        return total, logits

    def _step(self, batch: Batch, batch_idx: int, stage: str) -> Tensor | None:
        image, label = batch["image"], batch["label"][:, 0]
        if image.ndim != 5:
            msg = (
                f"SAMMed3D trains on 3D crops [B, 1, D, H, W], got {tuple(image.shape)}; "
                "use a 3D data module (NnUNetDataModule, ClassFolderDataModule)"
            )
            raise ValueError(msg)
        if tuple(image.shape[2:]) != (self.model.image_size,) * 3:
            msg = (
                f"crops are {tuple(image.shape[2:])} but the network takes "
                f"{self.model.image_size}³; set the data module's patch_size to the model's "
                "image_size"
            )
            raise ValueError(msg)
        generator = None if stage == "train" else torch.Generator().manual_seed(batch_idx)
        targets, index = self.sample_targets(label, generator)
        if targets.shape[0] == 0:
            rank_zero_warn(f"{stage} batch {batch_idx}: no class large enough; batch skipped")
            return None
        embeddings = self.model.encode(self._to_net(self.normalize_crops(image[index])))
        loss, logits = self.click_loop(embeddings, targets, generator)
        pred = torch.sigmoid(logits[:, 0]) > self.hparams["mask_threshold"]
        inter = (pred & targets).flatten(1).sum(1)
        sizes = pred.flatten(1).sum(1) + targets.flatten(1).sum(1)
        dsc = (2 * inter / sizes.clamp(min=1)).mean()
        n = int(index.shape[0])
        sync = stage != "train"
        self.log(f"{stage}_loss", loss, batch_size=n, prog_bar=True, sync_dist=sync)
        self.log(f"{stage}_dice", dsc, batch_size=n, prog_bar=sync, sync_dist=sync)
        return loss

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        """One validation step (seeded clicks)."""
        self._step(batch, batch_idx, "val")

    # ----------------------------------------------------------------- inference
    @torch.no_grad()
    def refine(
        self,
        volume: Tensor,
        lo: tuple[int, ...],
        hi: tuple[int, ...],
        target: Tensor | None = None,
        clicks: list[Click] | None = None,
        on_step: Callable[[int, Tensor, Tensor, Click | None], None] | None = None,
        previous: Tensor | None = None,
    ) -> tuple[Tensor, tuple[tuple[int, ...], tuple[int, ...]], list[Click]]:
        """Segment one target of a volume, click after click.

        Either ``target`` is given and ``num_clicks`` clicks are simulated from its errors, or
        ``clicks`` are given and decoded together in one step.

        Args:
            volume: Intensities ``[D, H, W]``.
            lo: Low corner of the region to cover (e.g. the target's bounding box).
            hi: High corner (exclusive).
            target: Reference mask ``[D, H, W]`` (bool) to simulate clicks from.
            clicks: User clicks ``((z, y, x), 1 or 0)``.
            on_step: Called after every step with the step index, the probability map of the
                covered box, the target on that box (or an empty tensor) and the click added.
            previous: A previous binary prediction ``[D, H, W]`` given to the first step as the
                mask prompt (the CVPR 2025 baseline's binary low-res mask); zeros otherwise.

        Returns:
            The probability map of the covered box, the box ``(low, high)`` and the clicks.
        """
        size = self.model.image_size
        starts = region_windows(lo, hi, size, self.hparams["window_overlap"])
        box_lo, box_hi = windows_box(starts, size, volume.shape)
        box = tuple(slice(a, b) for a, b in zip(box_lo, box_hi, strict=True))
        rel = [tuple(s - a for s, a in zip(st, box_lo, strict=True)) for st in starts]
        embeddings = self._window_embeddings(volume, starts)
        lows = self._empty_low(len(starts), volume.device)
        if previous is not None:
            masks = torch.stack([crop_padded(previous.float(), st, size) for st in starts])
            lows = F.interpolate(
                self._to_net(masks[:, None]), size=lows.shape[2:], mode="trilinear"
            )
        box_target = target[box] if target is not None else volume.new_zeros(0)
        shape = tuple(b - a for a, b in zip(box_lo, box_hi, strict=True))
        prob = volume.new_zeros(shape)
        given = clicks is not None
        clicks = list(clicks or [])
        steps = 1 if given else self.hparams["num_clicks"]
        generator = torch.Generator().manual_seed(self.hparams["click_seed"])
        for step in range(steps):
            new: Click | None = None
            if not given:
                new = self._next_click(prob, box_target, box_lo, generator)
                if new is not None:
                    clicks.append(new)
            if given or new is not None or step == 0:
                prob, lows = self._decode_windows(embeddings, lows, starts, rel, clicks, shape)
            if on_step is not None:
                on_step(step, prob, box_target, new)
        return prob, (box_lo, box_hi), clicks

    def _paste_class(
        self,
        seg: Tensor,
        best: Tensor,
        prob: Tensor,
        lo: tuple[int, ...],
        hi: tuple[int, ...],
        class_id: int,
    ) -> None:
        """Write a class's probability map (box ``[lo, hi)``) into the label map, in place.

        A voxel goes to the class when its probability is above the threshold and above that
        of the classes written before (kept in ``best``).
        """
        box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        win = (prob > self.hparams["mask_threshold"]) & (prob > best[box])
        seg[box][win] = class_id
        best[box][win] = prob[win]

    def _window_embeddings(self, volume: Tensor, starts: list[tuple[int, ...]]) -> Tensor:
        """Embeddings of the cubes at ``starts``, each z-scored on its own.

        The interactive protocol calls :meth:`segment_interactive` once per step on the same
        volume and regions, so the embeddings of the last volume are kept per set of cubes (and
        per version of the volume and of the encoder weights): only the decoder runs again for a
        new click.
        """
        weights = (id(self.model), sum(p._version for p in self.model.parameters()))
        # inference tensors (Lightning's test loop) have no version counter, and are not
        # modified in place by the protocol
        version = 0 if volume.is_inference() else volume._version
        key = (version, tuple(starts), weights)
        cached = getattr(self, "_embedding_cache", None)
        # kept for one tensor object (a weak reference: a new volume never matches a freed one)
        if cached is None or cached[0]() is not volume:
            cached = self._embedding_cache = (weakref.ref(volume), {})
        if key in cached[1]:
            return cached[1][key]
        size = self.model.image_size
        fill = float(volume.min())
        embeddings = torch.cat(
            [
                self.model.encode(
                    self._to_net(
                        self.normalize_crops(crop_padded(volume, st, size, fill)[None, None])
                    )
                )
                for st in starts
            ]
        )
        cached[1][key] = embeddings
        return embeddings

    def _next_click(
        self, prob: Tensor, target: Tensor, offset: tuple[int, ...], generator: torch.Generator
    ) -> Click | None:
        pred = prob > self.hparams["mask_threshold"]
        if self.hparams["click_rule"] == "random":
            if bool((pred == target).all()):
                return None
            coords, labels = sample_error_clicks(pred[None], target[None], generator=generator)
            where, positive = tuple(int(v) for v in coords[0]), bool(labels[0])
        else:
            found = center_error_click(
                pred.cpu().numpy(), target.cpu().numpy(), seed=self.hparams["click_seed"]
            )
            if found is None:
                return None
            where, positive = tuple(int(v) for v in found[0]), bool(found[1])
        z, y, x = (w + o for w, o in zip(where, offset, strict=True))
        return (z, y, x), int(positive)

    def _decode_windows(
        self,
        embeddings: Tensor,
        lows: Tensor,
        starts: list[tuple[int, ...]],
        rel: list[tuple[int, ...]],
        clicks: list[Click],
        shape: tuple[int, ...],
    ) -> tuple[Tensor, Tensor]:
        """Decode every window with its clicks and previous logits; average overlapping logits."""
        device = embeddings.device
        size = self.model.image_size
        sum_logits = torch.zeros(shape, device=device)
        count = torch.zeros(shape, device=device)
        new_lows = []
        points = torch.tensor([c for c, _ in clicks], device=device).view(-1, 3)
        labels = torch.tensor([lab for _, lab in clicks], device=device, dtype=torch.long)
        for i, start in enumerate(starts):
            keep = inside(points, start, size)
            low_in = lows[i : i + 1]
            if keep.any():
                local = points[keep] - torch.tensor(start, device=device)
                low = self._decode(embeddings[i : i + 1], local[None], labels[keep][None], low_in)
            else:
                low = self._decode(embeddings[i : i + 1], None, None, low_in)
            new_lows.append(low)
            logits = self._full(low)[0, 0]
            paste_add(sum_logits, logits, rel[i])
            paste_add(count, torch.ones_like(logits), rel[i])
        prob = torch.sigmoid(sum_logits / count.clamp(min=1))
        prob[count == 0] = 0
        return prob, torch.cat(new_lows)

    def _case_inputs(self, batch: Batch, i: int) -> tuple[Tensor, Tensor | None, dict[str, Any]]:
        image = batch["image"]
        if image.ndim != 5:
            msg = (
                f"SAMMed3D test/predict works on volumes [B, 1, D, H, W], got "
                f"{tuple(image.shape)}; use a 3D data module"
            )
            raise ValueError(msg)
        label = batch["label"][i, 0] if "label" in batch else None
        return image[i, 0], label, batch["meta"][i]

    def _user_clicks(
        self, case_id: str, meta: dict[str, Any], classes: dict[int, Any], shape: tuple[int, ...]
    ) -> dict[int, tuple[list[Click], tuple[tuple[int, ...], tuple[int, ...]]]] | None:
        """A case's clicks from the clicks file on the method's grid, and each class's region."""
        path = self.hparams["clicks_file"]
        if not path:
            return None
        if self._clicks is None:
            self._clicks = read_clicks_file(path)
        if case_id not in self._clicks:
            return None
        by_name = {info.name: c for c, info in classes.items()}
        src, dst = meta.get("source_affine"), meta.get("affine")
        out = {}
        for key, given in self._clicks[case_id].items():
            if key.isdigit():
                class_id = int(key)
            elif key in by_name:
                class_id = by_name[key]
            else:
                msg = (
                    f"{path}: case {case_id!r} names class {key!r}, which the data does not know; "
                    f"use a class id or one of {sorted(by_name)}"
                )
                raise DataError(msg)
            pts = [*given.fg, *given.bg]
            labs = [1] * len(given.fg) + [0] * len(given.bg)
            corners = [] if given.box is None else [given.box[:3], given.box[3:]]
            allpts = np.asarray([*pts, *corners], dtype=np.float64).reshape(-1, 3)
            if src is not None and dst is not None:
                allpts = map_points(allpts, np.asarray(src), np.asarray(dst))
            grid = np.rint(allpts).astype(int)
            for p in grid:
                if not all(0 <= v < n for v, n in zip(p, shape, strict=True)):
                    msg = (
                        f"{path}: case {case_id!r} class {key!r} has a point outside the image "
                        f"({tuple(int(v) for v in p)} on the resampled grid {shape}); give voxel "
                        "indices (z, y, x) of the source image"
                    )
                    raise DataError(msg)
            clicks = [(tuple(int(v) for v in p), lab) for p, lab in zip(grid, labs, strict=False)]
            if corners:
                box = grid[len(pts) :]
                lo = tuple(int(v) for v in box.min(0))
                hi = tuple(int(v) + 1 for v in box.max(0))
            else:
                lo, hi = _click_region(clicks)
            out[class_id] = (clicks, (lo, hi))  # type: ignore[assignment]
        return out

    def _recorder(
        self, rows: list[dict[str, Any]], started: float, spacing: list[float]
    ) -> Callable[[int, Tensor, Tensor, Click | None], None]:
        """A callback of :meth:`refine` scoring every step into ``rows``."""
        threshold, tolerance = self.hparams["mask_threshold"], self.hparams["nsd_tolerance"]

        def record(step: int, prob: Tensor, target: Tensor, click: Click | None) -> None:
            pred, ref = (prob > threshold).cpu().numpy(), target.cpu().numpy()
            d = dice(pred, ref)
            n = surface_dice(pred, ref, spacing, tolerance) if d > NSD_MIN_DICE else 0.0
            where = "" if click is None else " ".join(map(str, click[0]))
            kind = "none" if click is None else ("fg" if click[1] else "bg")
            rows.append(
                {
                    "click": step + 1,
                    "click_zyx": where,
                    "click_label": kind,
                    "dsc": d,
                    "nsd": n,
                    "seconds": time.perf_counter() - started,
                }
            )

        return record

    def _segment_case(self, batch: Batch, i: int, batch_idx: int, score: bool) -> dict[str, Any]:
        volume, label, meta = self._case_inputs(batch, i)
        classes = batch.get("classes", [{}] * (i + 1))[i]
        case_id = str(meta.get("case_id", f"case_{batch_idx}_{i}"))
        spacing = [float(v) for v in batch["spacing"][i]]
        user = self._user_clicks(case_id, meta, classes, tuple(volume.shape))
        if user is None and label is None:
            where = self.hparams["clicks_file"] or "no clicks_file given"
            msg = (
                f"case {case_id!r} has no label to simulate clicks from and no clicks in the "
                f"clicks file ({where}); add its clicks to --model.init_args.clicks_file"
            )
            raise DataError(msg)
        seg = torch.zeros(volume.shape, dtype=torch.long, device=volume.device)
        best = torch.zeros(volume.shape, device=volume.device)
        if user is not None:
            jobs = {c: (clicks, region) for c, (clicks, region) in user.items()}
        else:
            assert label is not None
            jobs = {}
            for c in (int(v) for v in torch.unique(label) if v > 0):
                found = torch.nonzero(label == c)
                lo = tuple(int(v) for v in found.min(0).values)
                hi = tuple(int(v) + 1 for v in found.max(0).values)
                jobs[c] = (None, (lo, hi))
        scores: dict[int, dict[str, float]] = {}
        for c, (clicks, (lo, hi)) in jobs.items():
            name = classes[c].name if c in classes else str(c)
            target = None if label is None or user is not None else label == c
            rows: list[dict[str, Any]] = []
            started = time.perf_counter()
            record = self._recorder(rows, started, spacing)
            prob, (blo, bhi), _ = self.refine(
                volume,
                lo,
                hi,
                target=target,
                clicks=clicks,
                on_step=record if (score and target is not None) else None,
            )
            self._paste_class(seg, best, prob, blo, bhi, c)
            if rows:
                for r in rows:
                    self.click_table.add(case=case_id, class_id=c, class_name=name, **r)
                last = rows[-1]
                scores[c] = {"dsc": last["dsc"], "nsd": last["nsd"]}
                self.class_table.add(
                    case=case_id,
                    class_id=c,
                    class_name=name,
                    dsc=last["dsc"],
                    nsd=last["nsd"],
                    dsc_first=rows[0]["dsc"],
                    seconds=time.perf_counter() - started,
                )
        return {
            "case_id": case_id,
            "seg": seg,
            "volume": volume,
            "label": label,
            "meta": meta,
            "spacing": spacing,
            "scores": scores,
        }

    @torch.no_grad()
    def segment_interactive(
        self,
        image: Tensor,
        spacing: list[float],
        prompts: dict[int, ClassPrompt],
        previous: Tensor | None,
    ) -> Tensor:
        """Segment classes from their boxes and clicks (the interactive protocol's interface).

        SAM-Med3D takes no box prompt; as in the CVPR 2025 baseline, a box becomes a positive
        click at its centre and fixes the region the cubes cover. All clicks of a class are
        decoded together, with the previous prediction of the class as the mask prompt.

        Args:
            image: Intensities ``[D, H, W]``.
            spacing: Voxel size (unused: the data module resampled the volume).
            prompts: Box and clicks per class id.
            previous: The previous label map, or None.

        Returns:
            Label map ``[D, H, W]``; overlaps go to the most probable class.
        """
        seg = torch.zeros(image.shape, dtype=torch.long, device=image.device)
        best = torch.zeros(image.shape, device=image.device)
        for c, prompt in prompts.items():
            clicks: list[Click] = []
            box = prompt.box
            if box is not None:
                lo = (box["z_min"], box["z_mid_y_min"], box["z_mid_x_min"])
                hi = (box["z_max"] + 1, box["z_mid_y_max"] + 1, box["z_mid_x_max"] + 1)
                centre = (box["z_mid"], (lo[1] + hi[1] - 1) // 2, (lo[2] + hi[2] - 1) // 2)
                clicks.append((centre, 1))
            clicks += [(tuple(int(v) for v in p), label) for p, label in prompt.clicks()]  # type: ignore[misc]
            if not clicks:
                continue
            if box is None:
                lo, hi = _click_region(clicks)
            prev = None if previous is None else previous == c
            prob, (blo, bhi), _ = self.refine(image, lo, hi, clicks=clicks, previous=prev)
            self._paste_class(seg, best, prob, blo, bhi, c)
        return seg

    def native_test_step(self, batch: Batch, batch_idx: int) -> None:
        """Segment every class of each volume with ``num_clicks`` simulated clicks and score it."""
        for i in range(batch["image"].shape[0]):
            r = self._segment_case(batch, i, batch_idx, score=True)
            scores = r["scores"]
            dsc = float(np.mean([s["dsc"] for s in scores.values()])) if scores else float("nan")
            nsd = float(np.mean([s["nsd"] for s in scores.values()])) if scores else float("nan")
            self.case_table.add(case=r["case_id"], classes=len(scores), dsc=dsc, nsd=nsd)
            self.log("test_dsc", dsc, batch_size=1, on_epoch=True, sync_dist=True)
            self.log("test_nsd", nsd, batch_size=1, on_epoch=True, sync_dist=True)
            self._write_outputs(r)

    def predict_step(self, batch: Batch, batch_idx: int) -> list[Tensor]:
        """Segment each volume (user clicks, or clicks simulated from its label)."""
        out = []
        for i in range(batch["image"].shape[0]):
            r = self._segment_case(batch, i, batch_idx, score=False)
            self._write_outputs(r)
            out.append(r["seg"].cpu())
        return out

    def _write_outputs(self, result: dict[str, Any]) -> None:
        seg = result["seg"].cpu().numpy()
        meta = result["meta"]
        if self.hparams["save_predictions"]:
            write_prediction(
                self.output_dir / "predictions", result["case_id"], seg, meta, result["spacing"]
            )
        if self._overlays_written < self.hparams["num_overlays"]:
            pred = result["seg"]
            ref = result["label"]
            mask = ref if ref is not None else pred
            if bool((mask > 0).any()):
                z = int((mask > 0).flatten(1).sum(1).argmax())
                self.save_overlay(
                    f"{result['case_id']}_z{z:03d}",
                    result["volume"][z].cpu().numpy(),
                    pred[z].cpu().numpy(),
                    None if ref is None else ref[z].cpu().numpy(),
                )
                self._overlays_written += 1

    def on_native_test_epoch_start(self) -> None:
        """Start empty tables."""
        self.configure_metrics()

    def on_predict_epoch_start(self) -> None:
        """Check the output folder and start counting overlays."""
        super().on_predict_epoch_start()
        self.configure_metrics()

    def on_native_test_epoch_end(self) -> None:
        """Gather the tables of all ranks; rank zero writes them with the mean click curve."""
        for table in (self.click_table, self.class_table, self.case_table):
            table.rows = self.gather_rows(table.rows)
        if self.trainer.is_global_zero and len(self.case_table):
            self._write_tables()

    def _write_tables(self) -> None:
        out = self.output_dir
        self.click_table.write(out, "test_clicks")
        self.class_table.write(out, "test_classes")
        self.case_table.write(out, "test_cases")
        curve = CaseTable(["dsc", "nsd"])
        for k in sorted({r["click"] for r in self.click_table.rows}):
            rows = [r for r in self.click_table.rows if r["click"] == k]
            curve.add(
                click=k,
                targets=len(rows),
                dsc=float(np.mean([r["dsc"] for r in rows])),
                nsd=float(np.mean([r["nsd"] for r in rows])),
            )
        curve.write(out, "test_click_curve")
        rows = [[r["case"], r["class_name"], r["dsc"], r["nsd"]] for r in self.class_table.rows]
        log_table(self.trainer.loggers, "test/classes", ["case", "class", "dsc", "nsd"], rows)
        rank_zero_info(
            f"\nMean over targets after each click ({out}):\n"
            + curve.to_markdown()
            + f"\nPer-case scores after the last click:\n{self.case_table.to_markdown()}"
        )
