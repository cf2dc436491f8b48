"""BiomedParse v2: text-prompted segmentation trained on 2.5D slices, applied to volumes."""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from scipy import ndimage
from torch import Tensor

from segfm.checkpoints.biomedparse import load_into
from segfm.errors import ConfigError
from segfm.evaluation.options import Evaluation, Protocol
from segfm.evaluation.writers import write_prediction
from segfm.inference.volume25d import SliceOptions, segment_volume_25d, upsample
from segfm.methods.base import BaseTask
from segfm.models.biomedparse import BiomedParse as Network
from segfm.models.biomedparse import biomedparse_tiny, biomedparse_v2, load_tokenizer
from segfm.sample import Batch, CaseMeta


class CharTokenizer:
    """Bytes as tokens (ids 0-255), 256 = start, 257 = end/padding: a CLIP-shaped stand-in.

    Only for the ``tiny`` network when no ``clip_dir`` is given (tests, demos).
    """

    vocab_size = 258

    def __call__(self, texts: list[str], max_length: int, **_: Any) -> dict[str, Tensor]:
        """``input_ids`` and ``attention_mask`` ``[N, max_length]`` like ``CLIPTokenizer``."""
        ids = torch.full((len(texts), max_length), 257, dtype=torch.int64)
        mask = torch.zeros_like(ids)
        for i, text in enumerate(texts):
            row = [256, *list(text.lower().encode())[: max_length - 2], 257]
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        return {"input_ids": ids, "attention_mask": mask}


def edge_target(label: Tensor) -> Tensor:
    """Edges ``[N, 1, *S]``: 3x3 dilation minus erosion (edges replicated) > 0."""
    x = F.pad(label.float(), (1, 1, 1, 1), mode="replicate")
    return ((F.max_pool2d(x, 3, 1) + F.max_pool2d(-x, 3, 1)) > 0).float()


def draw_classes(ids: list[int], n: int, instance: bool, rng: random.Random) -> list[int]:
    """The original loader's class draw for one slice.

    Instance datasets: the first class ``n`` times; semantic datasets: ``n`` distinct classes when
    there are at least ``n``, else ``n`` draws with replacement (``np.random.choice(all_classes,
    n, replace=len(all_classes) < n)`` in ``BiomedParseDataset.__getitem__``).
    """
    if instance:
        return [ids[0]] * n
    if len(ids) >= n:
        return rng.sample(ids, n)
    return [rng.choice(ids) for _ in range(n)]


def split_instances(seg: Tensor) -> Tensor:
    """Give each 6-connected component of the foreground its own id (as cc3d in the evaluator)."""
    labels, _ = ndimage.label(
        seg.cpu().numpy() > 0, structure=ndimage.generate_binary_structure(3, 1)
    )
    return torch.from_numpy(labels.astype(np.int64)).to(seg.device)


@dataclass(frozen=True)
class BiomedParseLoss:
    """BiomedParse's training prompts and loss weights (the original's ``BiomedParseLossCLS``).

    Args:
        num_prompts: Prompts sampled per training slice.
        cls_coeff: Weight of the existence loss.
        pos_weight: Positive weight of the existence BCE.
        edge_coeff: Weight of the edge loss.
    """

    num_prompts: int = 4
    cls_coeff: float = 1.0
    pos_weight: float = 3.0
    edge_coeff: float = 1.0

    def __post_init__(self) -> None:
        if self.num_prompts < 1:
            msg = f"loss.num_prompts must be >= 1, got {self.num_prompts}"
            raise ValueError(msg)
        for name in ("cls_coeff", "pos_weight", "edge_coeff"):
            if getattr(self, name) < 0:
                msg = f"loss.{name} must be >= 0, got {getattr(self, name)}"
                raise ValueError(msg)


DEFAULT_LOSS = BiomedParseLoss()
DEFAULT_SLICES = SliceOptions()


class BiomedParse(BaseTask):
    """BiomedParse v2 (Zhao et al., 2025): text prompts, 2.5D slices, 3D inference.

    Training (``fit``) on 2.5D slices ``[B, 3, S, S]`` (intensities 0-255 after ``image_scale``):
    per slice ``loss.num_prompts`` (class, random prompt) pairs; for semantic datasets the classes
    are drawn from all the dataset's classes (distinct when there are at least ``num_prompts``,
    else with replacement, :func:`draw_classes`), so absent ones are negatives; for instance
    datasets the one class ``num_prompts`` times with every instance merged into the target.
    Loss as the original's ``BiomedParseLossCLS``, per prompt ``cls_coeff * cls + exist * (seg
    + edge_coeff * edge)``, averaged: ``cls`` the existence BCE (``pos_weight``), ``exist`` 1
    when the target is non-empty, so the segmentation and edge losses count only on present
    targets; ``seg`` and ``edge`` = sigmoid Dice (squared denominator) + BCE against the mask and
    against the 3x3 morphological gradient of the label, the logits upsampled to the label by
    antialiased bicubic interpolation (:func:`upsample`), as the original.

    Inference (``test`` with the text protocol, ``predict``): one prompt per class, the volume
    segmented slice by slice (:func:`~segfm.inference.volume25d.segment_volume_25d`, options
    ``slices``). Instance datasets (``meta["instance"]``): the binary prediction is split into
    6-connected instances (the original has no such step). The Boltzmann sampling also runs at
    inference (as the original), drawn from a generator seeded with ``sampling_seed`` per volume.

    Args:
        arch: ``v2`` (released network) or ``tiny`` (tests, demos).
        checkpoint: ``biomedparse_v2.ckpt`` (official layout) or None.
        clip_dir: Local folder of the CLIP tokenizer (``openai/clip-vit-base-patch32``); the
            ``tiny`` network falls back to a byte tokenizer when None.
        image_size: Side of the encoded slices (512 for the released weights).
        image_scale: Factor bringing the data module's training images to 0-255.
        loss: Training prompts per slice and loss weights.
        slices: Slice batching and post-processing at inference.
        sampling_seed: Seed of the Boltzmann sampling at validation and inference.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        lr_schedule: ``constant`` (the original), ``cosine`` or ``multistep``.
        output_dir: Folder for outputs (default: the run's log folder).
        export_official: Write ``biomedparse_v2.ckpt``-layout files beside checkpoints.
        protocol: ``text`` (default: the CVPR 2025 text protocol) or ``native``/``interactive``
            (not supported by this method).
        evaluation: NSD tolerance, predictions and overlays written in test / predict.
    """

    official_format = "biomedparse"
    native_protocol: ClassVar[Protocol] = Protocol("text")

    def __init__(
        self,
        arch: Literal["v2", "tiny"] = "v2",
        checkpoint: str | None = None,
        clip_dir: str | None = None,
        image_size: int = 512,
        image_scale: float = 1.0,
        loss: BiomedParseLoss = DEFAULT_LOSS,
        slices: SliceOptions = DEFAULT_SLICES,
        sampling_seed: int = 0,
        lr: float = 1e-5,
        weight_decay: float = 0.01,
        lr_schedule: Literal["constant", "cosine", "multistep"] = "constant",
        output_dir: str | None = None,
        export_official: bool = True,
        protocol: Literal["native", "interactive", "text"] = "text",
        evaluation: Evaluation | None = None,
    ) -> None:
        if image_size <= 0 or image_size % 32 or image_scale <= 0:
            msg = (
                f"need image_size a positive multiple of 32 and image_scale > 0, got {image_size} "
                f"and {image_scale}; check the model's init_args"
            )
            raise ValueError(msg)
        if arch == "v2" and clip_dir is None:
            msg = "arch v2 needs clip_dir, a local folder of the clip-vit-base-patch32 tokenizer"
            raise ValueError(msg)
        self.arch, self.checkpoint, self.clip_dir = arch, checkpoint, clip_dir
        self.image_size, self.image_scale, self.sampling_seed = (
            image_size,
            image_scale,
            sampling_seed,
        )
        self.loss_options, self.slices = loss, slices
        super().__init__(
            lr=lr,
            weight_decay=weight_decay,
            lr_schedule=lr_schedule,
            output_dir=output_dir,
            export_official=export_official,
            protocol=protocol,
            evaluation=evaluation,
        )
        # plain data in the checkpoint, which then loads with torch.load(weights_only=True)
        self.hparams.update(loss=asdict(loss), slices=asdict(slices))

    # ------------------------------------------------------------------- set-up
    def configure_models(self) -> None:
        """Build the network and tokenizer and load the initial weights."""
        self.tokenizer = load_tokenizer(self.clip_dir) if self.clip_dir else CharTokenizer()
        if self.arch == "tiny":
            vocab = getattr(self.tokenizer, "vocab_size", 0)
            if hasattr(self.tokenizer, "__len__"):  # transformers: added tokens included
                vocab = max(vocab, len(self.tokenizer))
            self.model: Network = biomedparse_tiny(vocab_size=vocab)
        else:
            self.model = biomedparse_v2()
        if self.checkpoint:
            load_into(self.model, self.checkpoint)

    def configure_losses(self) -> None:
        """Sigmoid Dice with squared denominator, per prompt (BCE added in :meth:`seg_loss`)."""
        self.dice = DiceLoss(sigmoid=True, squared_pred=True, reduction="none")

    # ---------------------------------------------------------------- prompting
    def tokens(self, texts: list[str]) -> Tensor:
        """Grounding tokens ``[T, N, C]`` of prompts."""
        length = self.model.text_encoder.context_length
        out = self.tokenizer(
            texts, padding="max_length", truncation=True, max_length=length, return_tensors="pt"
        )
        ids = out["input_ids"].to(self.device)
        return self.model.encode_text(ids, out["attention_mask"].to(self.device))

    def sample_prompts(
        self, label: Tensor, classes: dict[int, Any], instance: bool, rng: random.Random
    ) -> tuple[list[str], Tensor]:
        """``num_prompts`` prompts and their label maps ``[P, 1, S, S]`` for one slice."""
        ids = sorted(int(c) for c in classes) or [1]
        texts, maps = [], []
        for c in draw_classes(ids, self.loss_options.num_prompts, instance, rng):
            info = classes.get(c)
            options = (info.prompts or (info.name,)) if info is not None else (str(c),)
            texts.append(rng.choice(list(options)))
            maps.append(label * (label > 0) if instance else (label == c).long())
        return texts, torch.stack(maps)

    def prompt_rng(self, seed: int | None) -> random.Random:
        """Generator of the class and prompt draws: seeded, or from torch's (training)."""
        return random.Random(int(torch.randint(2**31, ())) if seed is None else seed)

    # ------------------------------------------------------------------ training
    def seg_loss(self, logits: Tensor, target: Tensor) -> Tensor:
        """Per-prompt Dice + BCE ``[N]`` of logits against binary targets ``[N, 1, S, S]``."""
        dice = self.dice(logits, target).flatten()
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        return dice + bce.flatten(1).mean(1)

    def loss_terms(
        self, masks: Tensor, edges: Tensor | None, existence: Tensor, maps: Tensor
    ) -> dict[str, Tensor]:
        """The loss and its terms for predictions and label maps ``[N, 1, S, S]``."""
        weights = self.loss_options
        size = (maps.shape[-2], maps.shape[-1])
        target = (maps > 0).float()
        exist = target.flatten(1).amax(1)
        pos = torch.tensor(weights.pos_weight, device=existence.device)
        cls = F.binary_cross_entropy_with_logits(
            existence.flatten().float(), exist, pos_weight=pos, reduction="none"
        )
        seg = self.seg_loss(upsample(masks, size), target)
        total = weights.cls_coeff * cls + seg * exist
        terms = {"cls": cls.mean(), "seg": seg.mean()}
        if edges is not None and weights.edge_coeff > 0:
            edge = self.seg_loss(upsample(edges, size), edge_target(maps))
            total = total + weights.edge_coeff * edge * exist
            terms["edge"] = edge.mean()
        terms["loss"] = total.mean()
        return terms

    def _step(self, batch: Batch, batch_idx: int, stage: str) -> Tensor:
        """Loss of a batch of 2.5D slices with sampled prompts."""
        images = batch["image"].float() * self.image_scale
        if images.ndim != 4 or images.shape[1] != 3:
            msg = f"BiomedParse trains on 2.5D slices [B, 3, S, S], got {tuple(images.shape)}"
            raise ConfigError(msg)
        seed = self.sampling_seed + batch_idx if stage != "train" else None
        rng = self.prompt_rng(seed)
        texts, maps = [], []
        for b in range(images.shape[0]):
            instance = bool(batch["meta"][b].get("instance", False))
            t, m = self.sample_prompts(batch["label"][b], batch["classes"][b], instance, rng)
            texts += t
            maps.append(m)
        generator = None
        if seed is not None:
            generator = torch.Generator(device=images.device).manual_seed(seed)
        features = self.model.encode_image(images)
        counts = [self.loss_options.num_prompts] * images.shape[0]
        out = self.model.decode(features, self.tokens(texts), counts, generator)
        terms = self.loss_terms(out.masks, out.edges, out.existence, torch.cat(maps))
        for name, value in terms.items():
            key = f"{stage}_loss" if name == "loss" else f"{stage}_{name}_loss"
            self.log(
                key, value, batch_size=images.shape[0], prog_bar=name == "loss", sync_dist=True
            )
        return terms["loss"]

    # ----------------------------------------------------------------- inference
    @torch.no_grad()
    def segment_volume(self, image: Tensor, prompts: dict[int, str], instance: bool) -> Tensor:
        """Label map ``[D, H, W]`` of the prompted classes (see the class docstring)."""
        ids = sorted(prompts)
        text = self.tokens([prompts[c] for c in ids])
        generator = torch.Generator(device=self.device).manual_seed(self.sampling_seed)
        seg = segment_volume_25d(
            self.model, image, text, ids, self.slices, self.image_size, generator
        )
        return split_instances(seg) if instance else seg

    def segment_text(
        self, image: Tensor, spacing: list[float], prompts: dict[int, str], meta: CaseMeta
    ) -> Tensor:
        """The text protocol's interface: instances split where ``meta["instance"]`` is true."""
        return self.segment_volume(image, prompts, bool(meta.get("instance", False)))

    def predict_step(self, batch: Batch, batch_idx: int) -> list[Tensor]:
        """Segment every volume ``[B, 1, D, H, W]`` from its text prompts (or class names)."""
        segs = []
        for i, meta in enumerate(batch["meta"]):
            classes = batch.get("classes", [{}] * len(batch["meta"]))[i]
            prompts = {int(c): str(t) for c, t in (meta.get("text_prompts") or {}).items()}
            prompts = prompts or {
                int(c): (info.prompts[0] if info.prompts else info.name)
                for c, info in classes.items()
            }
            seg = self.segment_volume(batch["image"][i, 0], prompts, bool(meta.get("instance")))
            if self.evaluation.save_predictions:
                spacing = [float(s) for s in batch["spacing"][i]]
                write_prediction(
                    self.output_dir / "predictions",
                    str(meta.get("case_id", i)),
                    seg.numpy(),
                    meta,
                    spacing,
                )
            segs.append(seg)
        return segs
