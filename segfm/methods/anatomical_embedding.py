"""SAM, SAM++ and Cross-SAM: self-supervised anatomical embeddings trained on two-view pairs."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from segfm.data.io.embeddings_h5 import write_embeddings
from segfm.inference.embedding import INPUT_MULTIPLE, embed_volume
from segfm.losses import CoarseInfoNCELoss, FineInfoNCELoss, SupConMeanLoss
from segfm.methods.base import BaseTask
from segfm.models.anatomical_embedding import COARSE_STRIDE, FINE_STRIDE, build_embedding_model
from segfm.sample import Batch
from segfm.utils import schedules

Stage = Literal["sam", "sam_pp", "cross_sam_intra", "cross_sam_inter"]
_DEFAULT_ARCH = {
    "sam": "sam",
    "sam_pp": "sam_pp",
    "cross_sam_intra": "cross_sam",
    "cross_sam_inter": "cross_sam",
}


def _pairs(batch: Batch, key: str) -> Tensor:
    """``<key>1`` and ``<key>2`` ``[B, C, *S]`` interleaved to ``[2B, C, *S]``."""
    one, two = (
        torch.stack(v) if isinstance(v, list) else v for v in (batch[f"{key}1"], batch[f"{key}2"])
    )
    return torch.stack([one, two], dim=1).flatten(0, 1)


def _pool(x: Tensor, stride: tuple[int, int, int]) -> Tensor:
    """Positions ``[B, 3, *S]`` averaged over each embedding voxel's block of input voxels."""
    return F.avg_pool3d(x.float(), kernel_size=stride, stride=stride)


def _first(valid: Tensor, stride: tuple[int, int, int]) -> Tensor:
    """Validity ``[B, *S]`` of each block's first voxel (the original's nearest interpolation)."""
    return valid[:, 0, :: stride[0], :: stride[1], :: stride[2]].bool()


@dataclass(frozen=True)
class FineOptions:
    """Sampling of the fine InfoNCE loss (:class:`~segfm.losses.FineInfoNCELoss`).

    Args:
        pos_radius: Positive radius, mm.
        ignore_radius: Negative exclusion radius, mm.
        num_candidates: Voxels per view examined for positives.
        num_queries: Queries per direction.
        hard_pool: Hardest negatives kept.
        num_negatives: Negatives drawn from them.
    """

    pos_radius: float = 2.0
    ignore_radius: float = 20.0
    num_candidates: int = 2000
    num_queries: int = 100
    hard_pool: int = 2000
    num_negatives: int = 500


@dataclass(frozen=True)
class CoarseOptions:
    """Sampling of the coarse InfoNCE loss (:class:`~segfm.losses.CoarseInfoNCELoss`).

    Args:
        pos_radius: Positive radius, mm.
        ignore_radius: Exclusion radius, mm.
        z_threshold: Largest z offset of positives (view 1 to 2, 2 to 1), mm.
        hard_pool: Hardest negatives kept.
        num_negatives: Negatives drawn from them.
        num_global: Random negatives from the other pairs.
    """

    pos_radius: float = 25.0
    ignore_radius: float = 5.0
    z_threshold: tuple[float, float] = (8.0, 6.0)
    hard_pool: int = 250
    num_negatives: int = 200
    num_global: int = 1000


@dataclass(frozen=True)
class LossRules:
    """The InfoNCE sampling rules where segfm departs from the original (``segfm.losses.infonce``).

    Args:
        excluded: Negatives within the exclusion radius ``dropped`` or ``zeroed`` (original).
        voxels: Queries, keys and negatives among ``valid`` voxels or ``all`` (original).
        queries: Fine candidate queries among ``valid`` voxels or in the ``overlap_box`` (original).
        exclude_positive: Never use a query's positive as its negative (original: false).
    """

    excluded: Literal["dropped", "zeroed"] = "dropped"
    voxels: Literal["valid", "all"] = "valid"
    queries: Literal["valid", "overlap_box"] = "valid"
    exclude_positive: bool = True


@dataclass(frozen=True)
class SemanticOptions:
    """SAM++'s semantic steps (:class:`~segfm.losses.SupConMeanLoss`).

    Args:
        prob: Probability of a semantic step.
        temperature: SupConMean temperature.
    """

    prob: float = 0.4
    temperature: float = 0.1

    def __post_init__(self) -> None:
        if not 0 <= self.prob <= 1:
            msg = f"semantic.prob must be in [0, 1], got {self.prob}"
            raise ValueError(msg)


@dataclass(frozen=True)
class Warmup:
    """Linear warm-up of the learning rate (mmcv's ``warmup='linear'``).

    Args:
        iters: Warm-up steps.
        ratio: Starting factor of the rate.
    """

    iters: int = 500
    ratio: float = 0.001

    def __post_init__(self) -> None:
        if self.iters < 0 or not 0 < self.ratio <= 1:
            msg = (
                f"need warmup.iters >= 0 and warmup.ratio in (0, 1], got {self.iters}, {self.ratio}"
            )
            raise ValueError(msg)


DEFAULT_FINE, DEFAULT_COARSE, DEFAULT_RULES = FineOptions(), CoarseOptions(), LossRules()
DEFAULT_SEMANTIC, DEFAULT_WARMUP = SemanticOptions(), Warmup()


class AnatomicalEmbedding(BaseTask):
    """SAM (Yan et al., 2022), SAM++ / UAE-S and Cross-SAM / UAE-M on two-view pair batches.

    ``stage`` picks the loss: ``sam``, ``cross_sam_intra`` and ``cross_sam_inter`` use the fine
    + coarse InfoNCE losses (:mod:`segfm.losses.infonce`) on the pairs the data module yields
    (the Cross-SAM stages differ by their data, see ``configs/anatomical_embedding``); ``sam_pp``
    uses, at each step, the semantic prototype loss (:class:`~segfm.losses.SupConMeanLoss` on the
    ``semantic`` head) with probability ``semantic.prob`` on the labelled inter-volume pairs,
    else the SAM loss; never summed. Optimiser: SGD, linear warm-up, then constant.

    Validation: every ``val_grid_step``-th fine voxel of view 1 whose true position is covered
    by view 2 is matched to the view-2 fine voxel of highest (fine + coarse) / 2 similarity;
    ``val_med`` is the mean distance in mm between the matched and the true position, and
    ``val_med_identity`` that of matching each point to the same voxel index (the baseline).
    Predict: whole volumes to ``<output_dir>/embeddings/<case_id>.h5``.

    Args:
        stage: ``sam``, ``sam_pp``, ``cross_sam_intra`` or ``cross_sam_inter``.
        arch: Network (``sam``, ``sam_pp``, ``cross_sam``, ``tiny``, ``tiny_pp``); default by
            stage. ``sam_pp`` needs a semantic head (``sam_pp``, ``cross_sam``, ``tiny_pp``).
        checkpoint: Initial weights (released mmcv file, segfm export).
        fine: Sampling of the fine InfoNCE loss.
        coarse: Sampling of the coarse InfoNCE loss.
        rules: Sampling rules of both InfoNCE losses (segfm's or the original's).
        temperature: InfoNCE temperature (fine and coarse).
        semantic: SAM++'s semantic steps.
        val_grid_step: Fine-voxel step of the validation query grid.
        save_image: Store the preprocessed image in the HDF5 files.
        lr: SGD learning rate (0.02).
        momentum: SGD momentum.
        weight_decay: SGD weight decay.
        warmup: Linear warm-up of the learning rate.
        output_dir: Folder of predict outputs.
        export_official: Write the mmcv layout beside every checkpoint.
    """

    monitor = "val_med"
    mode = "min"
    official_format = "anatomical_embedding"

    def __init__(
        self,
        stage: Stage = "sam",
        arch: str | None = None,
        checkpoint: str | None = None,
        fine: FineOptions = DEFAULT_FINE,
        coarse: CoarseOptions = DEFAULT_COARSE,
        rules: LossRules = DEFAULT_RULES,
        temperature: float = 0.5,
        semantic: SemanticOptions = DEFAULT_SEMANTIC,
        val_grid_step: int = 2,
        save_image: bool = False,
        lr: float = 0.02,
        momentum: float = 0.9,
        weight_decay: float = 1e-4,
        warmup: Warmup = DEFAULT_WARMUP,
        output_dir: str | None = None,
        export_official: bool = True,
    ) -> None:
        if stage not in _DEFAULT_ARCH:
            msg = f"stage must be one of {sorted(_DEFAULT_ARCH)}, got {stage!r}"
            raise ValueError(msg)
        if val_grid_step < 1 or not 0 <= momentum < 1:
            msg = f"need val_grid_step >= 1 and momentum in [0, 1); got {val_grid_step}, {momentum}"
            raise ValueError(msg)
        self.stage = stage
        self.arch = arch or _DEFAULT_ARCH[stage]
        self.checkpoint = checkpoint
        self.fine = fine
        self.coarse = coarse
        self.rules = rules
        self.semantic = semantic
        self.temperature = temperature
        self.val_grid_step = val_grid_step
        self.save_image = save_image
        self.lr = lr
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.warmup = warmup
        super().__init__(
            lr=lr, weight_decay=weight_decay, output_dir=output_dir, export_official=export_official
        )
        # plain data in the checkpoint, which then loads with torch.load(weights_only=True)
        self.hparams.update(
            fine=asdict(fine),
            coarse=asdict(coarse),
            rules=asdict(rules),
            semantic=asdict(semantic),
            warmup=asdict(warmup),
        )

    # ------------------------------------------------------------------- set-up
    def configure_models(self) -> None:
        """Build the network (and load the initial weights)."""
        from segfm.checkpoints.anatomical_embedding import load_into

        self.model = build_embedding_model(self.arch)
        if self.stage == "sam_pp" and not self.model.has_semantic:
            msg = f"stage sam_pp needs a semantic head, arch {self.arch!r} has none: use sam_pp"
            raise ValueError(msg)
        if self.checkpoint:
            load_into(self.model, self.checkpoint)

    def configure_losses(self) -> None:
        """The fine, coarse and semantic losses."""
        rules, tau = asdict(self.rules), self.temperature
        self.fine_loss = FineInfoNCELoss(**asdict(self.fine), **rules, temperature=tau)
        del rules["queries"]  # fine loss only
        self.coarse_loss = CoarseInfoNCELoss(**asdict(self.coarse), **rules, temperature=tau)
        self.semantic_loss = SupConMeanLoss(self.semantic.temperature)

    def configure_optimizers(self) -> Any:
        """SGD with linear warm-up, then a constant rate (mmcv's ``warmup='linear'``)."""
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(
            params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay
        )
        entry = schedules.linear_warmup(optimizer, self.warmup.iters, self.warmup.ratio)
        return {"optimizer": optimizer, "lr_scheduler": entry}

    # ----------------------------------------------------------------- training
    def _embed_pairs(self, batch: Batch) -> tuple[dict[str, Tensor], Tensor, Tensor]:
        x = _pairs(batch, "view")
        bad = [n for n, m in zip(x.shape[2:], INPUT_MULTIPLE, strict=True) if n % m]
        if bad:
            size = tuple(x.shape[2:])
            msg = (
                f"view size {size} must be a multiple of {INPUT_MULTIPLE} (z, y, x): fix patch_size"
            )
            raise ValueError(msg)
        return self.model(x), _pairs(batch, "position"), _pairs(batch, "valid")

    def sam_loss(self, batch: Batch, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Fine and coarse InfoNCE losses of a batch of pairs (random draws from ``generator``)."""
        out, pos, valid = self._embed_pairs(batch)
        fine_pos, coarse_pos = _pool(pos, FINE_STRIDE), _pool(pos, COARSE_STRIDE)
        fine_valid, coarse_valid = _first(valid, FINE_STRIDE), _first(valid, COARSE_STRIDE)
        fine, coarse = out["fine"], out["coarse"]
        losses = [
            self.fine_loss(
                (fine[i], fine[i + 1]),
                (coarse[i], coarse[i + 1]),
                (fine_pos[i], fine_pos[i + 1]),
                (fine_valid[i], fine_valid[i + 1]),
                generator,
            )
            for i in range(0, fine.shape[0], 2)
        ]
        fine_loss = torch.stack(losses).mean()
        coarse_loss = self.coarse_loss(coarse, coarse_pos, coarse_valid, generator)
        return {"loss": fine_loss + coarse_loss, "fine_loss": fine_loss, "coarse_loss": coarse_loss}

    def sam_pp_semantic_loss(self, batch: Batch) -> dict[str, Tensor]:
        """SupConMean loss of the semantic embeddings of labelled inter-volume pairs."""
        x, labels = _pairs(batch, "view"), _pairs(batch, "label")
        sem = torch.cat([self.model(v[None])["semantic"] for v in x])  # per image, as the original
        labels = F.interpolate(labels.float(), size=sem.shape[2:], mode="nearest").long()
        losses = []
        for i in range(0, sem.shape[0], 2):
            feats = sem[i : i + 2].flatten(2).transpose(1, 2).flatten(0, 1)
            losses.append(self.semantic_loss(feats, labels[i : i + 2].flatten()))
        return {"loss": torch.stack(losses).mean()}

    def _step(self, batch: Batch, batch_idx: int, stage: str) -> Tensor | None:
        if stage != "train":
            self._validate(batch)
            return None
        intra, semantic = (
            (batch["intra"], batch.get("semantic")) if "intra" in batch else (batch, None)
        )
        use_semantic = self.stage == "sam_pp" and semantic is not None
        if use_semantic and float(torch.rand(())) < self.semantic.prob:
            parts = self.sam_pp_semantic_loss(semantic)
            self.log("train_semantic_loss", parts["loss"], batch_size=semantic["view1"].shape[0])
        else:
            parts = self.sam_loss(intra)
            size = intra["view1"].shape[0]
            self.log("train_fine_loss", parts["fine_loss"], batch_size=size)
            self.log("train_coarse_loss", parts["coarse_loss"], batch_size=size)
        self.log("train_loss", parts["loss"], prog_bar=True, batch_size=1)
        return parts["loss"]

    # --------------------------------------------------------------- validation
    def match_errors(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """Matching and identity errors (mm, per axis ``(z, y, x)``) of the grid points.

        Returns:
            ``[P, 3]`` absolute offsets of the matched and of the same-index positions.
        """
        out, pos, valid = self._embed_pairs(batch)
        fine_pos = _pool(pos, FINE_STRIDE)
        fine_valid = _first(valid, FINE_STRIDE)
        step = self.val_grid_step
        coarse = F.normalize(
            F.interpolate(out["coarse"], size=out["fine"].shape[2:], mode="trilinear"), dim=1
        )
        found, same = [], []
        for i in range(0, pos.shape[0], 2):
            grid = torch.zeros_like(fine_valid[i])
            grid[::step, ::step, ::step] = True
            q = (grid & fine_valid[i]).flatten().nonzero()[:, 0]
            keys = fine_valid[i + 1].flatten().nonzero()[:, 0]
            if q.numel() == 0 or keys.numel() == 0:
                continue
            p1, p2 = fine_pos[i].flatten(1).T, fine_pos[i + 1].flatten(1).T
            truth = p1[q]
            # keep points that view 2 covers: within half a voxel diagonal of a view-2 voxel
            voxel = (fine_pos[i + 1][:, 1, 1, 1] - fine_pos[i + 1][:, 0, 0, 0]).norm() / 2
            covered = torch.cdist(truth, p2[keys]).min(dim=1).values <= voxel
            q, truth = q[covered], truth[covered]
            f1, f2 = out["fine"][i].flatten(1).T, out["fine"][i + 1].flatten(1).T
            c1, c2 = coarse[i].flatten(1).T, coarse[i + 1].flatten(1).T
            sim = (f1[q] @ f2[keys].T + c1[q] @ c2[keys].T) / 2
            found.append((p2[keys[sim.argmax(dim=1)]] - truth).abs())
            same.append((p2[q] - truth).abs())
        if not found:
            empty = pos.new_zeros(0, 3)
            return empty, empty
        return torch.cat(found), torch.cat(same)

    def _validate(self, batch: Batch) -> None:
        errors, identity = self.match_errors(batch)
        if errors.numel() == 0:
            return
        n = errors.shape[0]
        self.log("val_med", errors.norm(dim=1).mean(), prog_bar=True, batch_size=n, sync_dist=True)
        self.log("val_med_identity", identity.norm(dim=1).mean(), batch_size=n, sync_dist=True)
        for axis, name in enumerate("zyx"):
            self.log(f"val_med_{name}", errors[:, axis].mean(), batch_size=n, sync_dist=True)

    # ------------------------------------------------------------------ predict
    def predict_step(self, batch: Batch, batch_idx: int) -> list[str]:
        """Embed each whole volume and write ``<output_dir>/embeddings/<case_id>.h5``."""
        written = []
        for i in range(batch["image"].shape[0]):
            image, meta = batch["image"][i, 0], batch["meta"][i]
            out = embed_volume(self.model, image)
            path = self.output_dir / "embeddings" / f"{meta['case_id']}.h5"
            path.parent.mkdir(parents=True, exist_ok=True)
            write_embeddings(
                path,
                {k: v.cpu().numpy() for k, v in out.items()},
                spacing=[float(s) for s in batch["spacing"][i]],
                affine=meta["affine"],
                strides={"fine": FINE_STRIDE, "coarse": COARSE_STRIDE, "semantic": FINE_STRIDE},
                image_shape=tuple(image.shape),
                case_id=str(meta["case_id"]),
                source=str(meta.get("source", "")),
                image=image.cpu().numpy() if self.save_image else None,
            )
            written.append(str(path))
        return written
