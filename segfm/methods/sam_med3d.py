"""SAM-Med3D: a 3D SAM prompted with clicks, refined click after click."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn
from monai.losses import DiceCELoss
from torch import Tensor
from torchmetrics import MetricCollection
from torchmetrics.segmentation import DiceScore

from segfm.checkpoints.sam import load_into
from segfm.checkpoints.sam_med3d import load_official
from segfm.evaluation.interactive import ClassPrompt
from segfm.evaluation.options import Evaluation, Protocol
from segfm.inference.cache import EmbeddingCache
from segfm.inference.click_windows import (
    Click,
    WindowInference,
    click_region,
    decode_points,
    empty_low,
    full_logits,
    paste_class,
    segment_region,
    to_net,
    zscore_foreground,
)
from segfm.methods.base import BaseTask
from segfm.models import build_sam
from segfm.models.build_sam import tiny_config
from segfm.prompts import center_error_click, sample_error_clicks
from segfm.sample import Batch


@dataclass
class ClickSimulation:
    """SAM-Med3D's training interaction.

    Attributes:
        train_iterations: Decoder steps per training crop.
        mask_only_steps: Give the mask prompt alone at one random step in 2..8 and at the last.
        detach_previous: Detach the previous logits fed back as the mask prompt (saves memory;
            the original back-propagates through them).
        min_target_voxels: Smallest class (voxels in the crop) used as a training target.
        raw_logit_errors: Find the previous step's errors as the original did, from raw logits
            > 0.5 (probability > 0.62); by default from probabilities > ``mask_threshold``.
        click_rule: Where each step's click falls: ``random``, a voxel drawn uniformly from the
            error region (the original); ``center``, the centre of the largest error component,
            as the native test places its clicks (:func:`segfm.prompts.center_error_click`).
        multi_click: Decode every click given so far at each step, as inference does (the
            original's ``multi_click``; False: only the newest click, the original's default).
        target_rule: Which class of a crop becomes its target: ``random`` among those large
            enough (the original), or ``centre``: the class at the crop's centre voxel when it
            is large enough (random otherwise), as the native test centres its cube on the
            target's first click.
    """

    train_iterations: int = 11
    mask_only_steps: bool = True
    detach_previous: bool = False
    min_target_voxels: int = 10
    raw_logit_errors: bool = False
    click_rule: Literal["random", "center"] = "random"
    multi_click: bool = False
    target_rule: Literal["random", "centre"] = "random"

    def __post_init__(self) -> None:
        """Check the values."""
        if self.train_iterations < 1 or self.min_target_voxels < 1:
            msg = (
                "train_iterations and min_target_voxels must be >= 1, got "
                f"{self.train_iterations} and {self.min_target_voxels}"
            )
            raise ValueError(msg)
        if self.target_rule not in ("random", "centre"):
            msg = f"target_rule must be 'random' or 'centre', got {self.target_rule!r}"
            raise ValueError(msg)
        if self.click_rule not in ("random", "center"):
            msg = f"click_rule must be 'random' or 'center', got {self.click_rule!r}"
            raise ValueError(msg)


def center_clicks(pred: Tensor, target: Tensor, seed: int = 42) -> tuple[Tensor, Tensor]:
    """One click per item at the centre of its largest error component (the native test's rule).

    Args:
        pred: Thresholded predictions, bool ``[N, *S]``.
        target: Targets, bool ``[N, *S]``.
        seed: Tie-breaking seed of :func:`segfm.prompts.center_error_click`.

    Returns:
        ``(coords, labels)`` as :func:`segfm.prompts.sample_error_clicks`: ``[N, len(S)]`` and
        ``[N]`` int64; an item without error gets a positive click at the centre of its target.
    """
    coords, labels = [], []
    for p, t in zip(pred.cpu().numpy(), target.cpu().numpy(), strict=True):
        found = center_error_click(p, t, seed=seed)
        if found is None:  # no error left: click the target's centre, as an all-empty prediction
            found = center_error_click(np.zeros_like(t), t, seed=seed) or (
                tuple(n // 2 for n in t.shape),
                False,
            )
        coords.append(found[0])
        labels.append(int(found[1]))
    device = target.device
    return torch.tensor(coords, device=device).view(-1, target.ndim - 1), torch.tensor(
        labels, device=device, dtype=torch.long
    )


class SAMMed3D(BaseTask):
    """SAM-Med3D (Wang et al., 2023) on any data module yielding 3D crops and volumes.

    Training (``fit``) follows SAM-Med3D's ``train.py``: in each crop one class present (at
    least ``min_target_voxels`` voxels) becomes the binary target; the crop is z-scored over its
    voxels > 0, encoded once, then decoded ``train_iterations`` times: each step adds one click
    drawn uniformly from the current error region (positive in a false negative, negative in a
    false positive) and feeds back the previous step's low-res logits as the mask prompt; at one
    random step in 2..8 and at the last, the mask prompt is given alone. Every step's logits,
    upsampled to the crop, add a DiceCE loss. Opt-in (``click_simulation``): clicks at the
    centre of the largest error as the native test gives them, every click so far decoded at
    each step, the class at the crop's centre as the target (the from-scratch demo uses all
    three). Fixed bugs of the original: the next click comes
    from probabilities > ``mask_threshold`` (not raw logits > 0.5; ``raw_logit_errors`` restores
    it), and a step without any error clicks inside the target instead of crashing.

    Inference on whole volumes ``[1, D, H, W]``: per class, cubes of the network size cover the
    region of its prompts (:func:`segfm.inference.click_windows.segment_region`), all its clicks
    are decoded together with the previous prediction as the mask prompt. ``protocol: native``
    is SAM-Med3D's N-click test: the interactive protocol without a box, ``evaluation.clicks``
    clicks (5 by default), each at the centre of the largest error component
    (``evaluation.click_rule: random`` draws as in training). ``predict`` takes user clicks
    from ``evaluation.clicks_file``.

    Args:
        arch: ``sam_med3d`` (the released 100M network) or ``tiny`` (tests and demos; its
            attention windows are no larger than its grid).
        image_size: Side of the cube the network sees (128 for the released weights).
        checkpoint: Initial weights: ``sam_med3d_turbo.pth`` (official layout), a plain state
            dict or a segfm export.
        normalize: ``zscore`` each crop over its voxels > 0; ``zscore_batch``: one mean and
            standard deviation over the voxels > 0 of all crops of the batch together (the
            original's ``ZNormalization`` of the stacked crops); ``none`` when the data module
            already normalised (e.g. the LIDC recipe's [0, 1] HU window). Inference z-scores each
            cube unless ``none``.
        click_simulation: The training interaction's steps and targets.
        lambda_ce: Weight of the cross-entropy term of DiceCE (0 reproduces the original, whose
            MONAI version dropped it for one channel).
        inference: Threshold and cube overlap at inference (the threshold also turns training
            logits into the clicks' predictions).
        lr: AdamW learning rate of the image encoder.
        decoder_lr_scale: Factor of ``lr`` for the prompt encoder and mask decoder (0.1 in the
            original).
        weight_decay: AdamW weight decay.
        lr_schedule: ``multistep`` (the original), ``cosine`` or ``constant``.
        lr_milestones: Epochs of the ``multistep`` drops.
        lr_gamma: Factor of each drop.
        output_dir: Folder for test/predict outputs (default: the run's log folder).
        export_official: Write an official SAM-Med3D file beside every checkpoint.
        protocol: ``native`` (N clicks, no box), ``interactive`` (box, then clicks) or ``text``
            (refused).
        evaluation: Clicks, click rule, NSD tolerance, clicks file and outputs.
    """

    monitor = "val_dice"
    mode = "max"
    official_format = "sam_med3d"
    native_protocol: ClassVar[Protocol] = Protocol("interactive", clicks=5, box=False)

    def __init__(
        self,
        arch: Literal["sam_med3d", "tiny"] = "sam_med3d",
        image_size: int = 128,
        checkpoint: str | None = None,
        normalize: Literal["zscore", "zscore_batch", "none"] = "zscore",
        click_simulation: ClickSimulation | None = None,
        lambda_ce: float = 1.0,
        inference: WindowInference | None = None,
        lr: float = 8e-5,
        decoder_lr_scale: float = 0.1,
        weight_decay: float = 0.1,
        lr_schedule: Literal["constant", "cosine", "multistep"] = "multistep",
        lr_milestones: tuple[int, ...] = (120, 180),
        lr_gamma: float = 0.1,
        output_dir: str | None = None,
        export_official: bool = True,
        protocol: Literal["native", "interactive", "text"] = "native",
        evaluation: Evaluation | None = None,
    ) -> None:
        if decoder_lr_scale <= 0 or lambda_ce < 0:
            msg = (
                f"decoder_lr_scale must be > 0 and lambda_ce >= 0, got {decoder_lr_scale} and "
                f"{lambda_ce}; check the model's init_args"
            )
            raise ValueError(msg)
        self.arch, self.image_size, self.checkpoint = arch, image_size, checkpoint
        self.normalize, self.lambda_ce, self.decoder_lr_scale = (
            normalize,
            lambda_ce,
            decoder_lr_scale,
        )
        self.click_simulation = click_simulation or ClickSimulation()
        self.inference = inference or WindowInference()
        self._cache = EmbeddingCache()
        self._previous_logits: dict[int, tuple[Tensor, Any]] = {}  # per class, last step's
        super().__init__(
            lr=lr,
            weight_decay=weight_decay,
            lr_schedule=lr_schedule,
            lr_milestones=lr_milestones,
            lr_gamma=lr_gamma,
            output_dir=output_dir,
            export_official=export_official,
            protocol=protocol,
            evaluation=evaluation,
        )

    # ------------------------------------------------------------------- set-up
    def configure_models(self) -> None:
        """Build the 3D SAM and load the initial weights."""
        if self.arch == "tiny":
            # windows no larger than the grid: a 4³ grid (32³ input) padded to 8³ windows made
            # the encoder 10x slower (the released network's 14-in-8 padding stays as it is)
            config = tiny_config(3)
            grid = max(1, self.image_size // config["patch_size"])
            window = min(config["window_size"], grid)
            self.model = build_sam(
                "tiny", spatial_dims=3, image_size=self.image_size, window_size=window
            )
        else:
            self.model = build_sam(self.arch, image_size=self.image_size)
        if self.checkpoint:
            load_into(self.model, load_official(self.checkpoint))

    def configure_losses(self) -> None:
        """DiceCE on logits (sigmoid, squared denominator), as SAM-Med3D."""
        self.loss = DiceCELoss(
            sigmoid=True, squared_pred=True, reduction="mean", lambda_ce=self.lambda_ce
        )

    def configure_metrics(self) -> None:
        """Dice of the last step's thresholded prediction, for training and validation."""
        dice = DiceScore(num_classes=1, average="macro", input_format="one-hot")
        self.stage_metrics(MetricCollection({"dice": dice}))

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Image encoder at ``lr``; prompt encoder and mask decoder at ``decoder_lr_scale * lr``."""
        low = self.hparams["lr"] * self.decoder_lr_scale
        rest = [*self.model.prompt_encoder.parameters(), *self.model.mask_decoder.parameters()]
        return [
            {"params": [p for p in self.model.image_encoder.parameters() if p.requires_grad]},
            {"params": [p for p in rest if p.requires_grad], "lr": low},
        ]

    def normalize_crops(self, crops: Tensor) -> Tensor:
        """Crops ``[N, 1, *S]`` as the network takes them (``normalize``)."""
        if self.normalize == "zscore_batch":  # all crops as one sample
            return zscore_foreground(crops.reshape(1, 1, -1)).view_as(crops)
        return zscore_foreground(crops) if self.normalize == "zscore" else crops

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
            # bincount, not unique: unique sorts every voxel (0.16 s CPU for a 32³ crop)
            counts = torch.bincount(label[b].flatten().clamp(min=0))
            ids = torch.nonzero(counts >= self.click_simulation.min_target_voxels).flatten()
            ids = ids[ids > 0]
            if ids.numel() == 0:
                continue
            pick = int(torch.randint(ids.numel(), (1,), generator=generator))
            chosen = int(ids[pick])
            if self.click_simulation.target_rule == "centre":
                centre = int(label[b][tuple(n // 2 for n in label.shape[1:])])
                chosen = centre if bool((ids == centre).any()) else chosen
            targets.append(label[b] == chosen)
            index.append(b)
        if not targets:
            return label.new_zeros((0, *label.shape[1:]), dtype=torch.bool), label.new_zeros(0)
        return torch.stack(targets), torch.tensor(index, device=label.device)

    def draw_mask_only_steps(self, generator: torch.Generator | None = None) -> set[int]:
        """The steps given the mask prompt alone: one uniform in 2..8 and the last.

        The original draws ``np.random.randint(2, 9)`` (2..8, the high end excluded) once per
        batch; with fewer than 9 steps the random one may fall past the end and not occur.
        """
        if not self.click_simulation.mask_only_steps:
            return set()
        last = self.click_simulation.train_iterations - 1
        return {last, int(torch.randint(2, 9, (1,), generator=generator))}

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
        options = self.click_simulation
        steps = options.train_iterations
        mask_only = self.draw_mask_only_steps(generator)
        dtype = torch.promote_types(embeddings.dtype, torch.float32)  # float64 in the tests
        low = empty_low(self.model, targets.shape[0], targets.device, dtype)
        pred = torch.zeros_like(targets)
        target = targets[:, None].to(dtype)
        total = targets.new_zeros((), dtype=dtype)
        logits = target
        given: list[tuple[Tensor, Tensor]] = []  # clicks so far: coords [N, 3], labels [N]
        for step in range(steps):
            if options.click_rule == "center":
                coords, labels = center_clicks(pred, targets)
            else:
                coords, labels = sample_error_clicks(pred, targets, generator=generator)
            if step in mask_only:
                low = decode_points(self.model, embeddings, None, None, low)
            else:
                given = [*given, (coords, labels)] if options.multi_click else [(coords, labels)]
                points = torch.stack([c for c, _ in given], 1)
                point_labels = torch.stack([lab for _, lab in given], 1)
                low = decode_points(self.model, embeddings, points, point_labels, low)
            logits = full_logits(self.model, low)
            total = total + self.loss(logits, target)
            if options.raw_logit_errors:
                pred = logits[:, 0].detach() > 0.5
            else:
                pred = torch.sigmoid(logits[:, 0].detach()) > self.inference.mask_threshold
            if options.detach_previous:
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
        embeddings = self.model.encode(to_net(self.normalize_crops(image)[index]))
        loss, logits = self.click_loop(embeddings, targets, generator)
        pred = torch.sigmoid(logits[:, 0]) > self.inference.mask_threshold
        n = int(index.shape[0])
        sync = stage != "train"
        self.log(f"{stage}_loss", loss, batch_size=n, prog_bar=True, sync_dist=sync)
        metrics = getattr(self, f"{stage}_metrics")
        metrics(pred[:, None].long(), targets[:, None].long())
        self.log_dict(metrics, batch_size=n, prog_bar=sync)
        return loss

    # ----------------------------------------------------------------- inference
    @torch.no_grad()
    def case_state(self) -> dict[str, Any]:
        """The embedding cache and the previous step's logits per class (the mask prompt)."""
        return super().case_state() | {"previous_logits": dict(self._previous_logits)}

    def restore_case_state(self, image: Tensor, state: dict[str, Any]) -> None:
        """Take back a :meth:`case_state` of the same case."""
        state = dict(state)
        self._previous_logits = dict(state.pop("previous_logits", {}))
        super().restore_case_state(image, state)

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
        decoded together, with the previous step's logits of the class as the mask prompt
        (``inference.mask_prompt: logits``, as SAM-Med3D's inference; kept from the previous
        call of the same case, which starts with ``previous`` None) or its previous binary
        prediction (``binary``).

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
        threshold = self.inference.mask_threshold
        if previous is None:  # a new case (or its box step): no logits to feed back
            self._previous_logits = {}
        kept = self._previous_logits
        for c, prompt in prompts.items():
            clicks: list[Click] = []
            box = prompt.box
            if box is not None:
                lo = (box["z_min"], box["z_mid_y_min"], box["z_mid_x_min"])
                hi = (box["z_max"] + 1, box["z_mid_y_max"] + 1, box["z_mid_x_max"] + 1)
                centre = (box["z_mid"], (lo[1] + hi[1] - 1) // 2, (lo[2] + hi[2] - 1) // 2)
                clicks.append((centre, 1))
            clicks += [(tuple(int(v) for v in p), label) for p, label in prompt.clicks()]
            if not clicks:
                continue
            region = (lo, hi) if box is not None else click_region(clicks)
            prev = None if previous is None else previous == c
            zscore = self.normalize != "none"
            use_logits = self.inference.mask_prompt == "logits" and previous is not None
            out: list[tuple[Tensor, Any]] = []
            prob, covered = segment_region(
                self.model,
                image,
                region,
                clicks,
                self._cache,
                self.inference,
                prev,
                zscore,
                previous_logits=kept.get(c) if use_logits else None,
                logits_out=out,
            )
            kept[c] = out[0]
            paste_class(seg, best, prob, covered, c, threshold)
        self._previous_logits = kept
        return seg
