"""SAM, SAM++ and Cross-SAM: self-supervised anatomical embeddings trained on two-view pairs."""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from segfm.data.io.embeddings_h5 import write_embeddings
from segfm.sample import Batch
from segfm.losses import CoarseInfoNCELoss, FineInfoNCELoss, SupConMeanLoss
from segfm.methods.base import BaseTask
from segfm.models.anatomical_embedding import (
    COARSE_STRIDE,
    FINE_STRIDE,
    INPUT_MULTIPLE,
    build_embedding_model,
    embed_volume,
)

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
    """Average over each embedding voxel's block of input voxels (positions, validity)."""
    return F.avg_pool3d(x.float(), kernel_size=stride, stride=stride)


class AnatomicalEmbedding(BaseTask):
    """SAM (Yan et al., 2022), SAM++ / UAE-S and Cross-SAM / UAE-M on two-view pair batches.

    ``stage`` picks the loss: ``sam``, ``cross_sam_intra`` and ``cross_sam_inter`` use the fine
    InfoNCE + coarse InfoNCE losses (:mod:`segfm.losses.infonce`) on the pairs the data module
    yields (intra-volume, aggressively augmented intra-volume, or registered CT-MR pairs: the
    Cross-SAM stages differ by their data, see ``configs/anatomical_embedding``); ``sam_pp``
    uses, at each step, the semantic prototype loss (:class:`~segfm.losses.SupConMeanLoss` on
    the ``semantic`` head) with probability ``semantic_prob`` on the labelled inter-volume
    pairs, else the SAM loss; the two are never summed. Optimiser: SGD with linear warm-up over
    ``warmup_iters`` steps from ``warmup_ratio * lr``, then constant (the official configs).

    Validation: every ``val_grid_step``-th fine voxel of view 1 whose true position is covered
    by view 2 is matched to the view-2 fine voxel of highest (fine + coarse) / 2 similarity;
    ``val_med`` is the mean distance in mm between the matched and the true position, and
    ``val_med_identity`` that of matching each point to the same voxel index (the baseline).

    Predict: whole volumes to ``<output_dir>/embeddings/<case_id>.h5``
    (:mod:`segfm.data.io.embeddings_h5`), with the grid's spacing and affine.

    Args:
        stage: ``sam``, ``sam_pp``, ``cross_sam_intra`` or ``cross_sam_inter``.
        arch: Network (``sam``, ``sam_pp``, ``cross_sam``, ``tiny``, ``tiny_pp``); default by
            stage. ``sam_pp`` needs a semantic head (``sam_pp``, ``cross_sam``, ``tiny_pp``).
        checkpoint: Initial weights (released mmcv file, segfm export).
        pos_radius: Fine positive radius, mm.
        ignore_radius: Fine negative exclusion radius, mm.
        num_candidates: Voxels per view examined for fine positives.
        num_queries: Fine queries per direction.
        hard_pool: Hardest fine negatives kept.
        num_negatives: Fine negatives drawn from them.
        temperature: InfoNCE temperature (fine and coarse).
        coarse_pos_radius: Coarse positive radius, mm.
        coarse_ignore_radius: Coarse exclusion radius, mm.
        coarse_z_threshold: Largest z offset of coarse positives (view 1 to 2, 2 to 1), mm.
        coarse_hard_pool: Hardest coarse negatives kept.
        coarse_negatives: Coarse negatives drawn from them.
        coarse_global: Random coarse negatives from the other pairs.
        semantic_prob: SAM++ probability of a semantic step.
        semantic_temperature: SupConMean temperature.
        val_grid_step: Fine-voxel step of the validation query grid.
        save_image: Store the preprocessed image in the HDF5 files.
        lr: SGD learning rate (0.02).
        momentum: SGD momentum.
        weight_decay: SGD weight decay.
        warmup_iters: Linear warm-up steps.
        warmup_ratio: Starting factor of the warm-up.
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
        pos_radius: float = 2.0,
        ignore_radius: float = 20.0,
        num_candidates: int = 2000,
        num_queries: int = 100,
        hard_pool: int = 2000,
        num_negatives: int = 500,
        temperature: float = 0.5,
        coarse_pos_radius: float = 25.0,
        coarse_ignore_radius: float = 5.0,
        coarse_z_threshold: tuple[float, float] = (8.0, 6.0),
        coarse_hard_pool: int = 250,
        coarse_negatives: int = 200,
        coarse_global: int = 1000,
        semantic_prob: float = 0.4,
        semantic_temperature: float = 0.1,
        val_grid_step: int = 2,
        save_image: bool = False,
        lr: float = 0.02,
        momentum: float = 0.9,
        weight_decay: float = 1e-4,
        warmup_iters: int = 500,
        warmup_ratio: float = 0.001,
        output_dir: str | None = None,
        export_official: bool = True,
    ) -> None:
        if stage not in _DEFAULT_ARCH:
            msg = f"stage must be one of {sorted(_DEFAULT_ARCH)}, got {stage!r}"
            raise ValueError(msg)
        if not 0 <= semantic_prob <= 1 or val_grid_step < 1 or warmup_iters < 0:
            msg = (
                f"need semantic_prob in [0, 1], val_grid_step >= 1, warmup_iters >= 0; got "
                f"{semantic_prob}, {val_grid_step}, {warmup_iters}"
            )
            raise ValueError(msg)
        if not 0 < warmup_ratio <= 1 or not 0 <= momentum < 1:
            msg = f"need warmup_ratio in (0, 1], momentum in [0, 1); got {warmup_ratio}, {momentum}"
            raise ValueError(msg)
        super().__init__(
            lr=lr, weight_decay=weight_decay, output_dir=output_dir, export_official=export_official
        )

    # ------------------------------------------------------------------- set-up
    def configure_models(self) -> None:
        """Build the network (and load the initial weights)."""
        from segfm.checkpoints.anatomical_embedding import load_into

        h = self.hparams
        self.model = build_embedding_model(h["arch"] or _DEFAULT_ARCH[h["stage"]])
        if h["stage"] == "sam_pp" and not self.model.has_semantic:
            msg = f"stage sam_pp needs a semantic head, arch {h['arch']!r} has none: use sam_pp"
            raise ValueError(msg)
        if h["checkpoint"]:
            load_into(self.model, h["checkpoint"])

    def configure_losses(self) -> None:
        """The fine, coarse and semantic losses."""
        h = self.hparams
        self.fine_loss = FineInfoNCELoss(
            h["pos_radius"], h["ignore_radius"], h["num_candidates"], h["num_queries"],
            h["hard_pool"], h["num_negatives"], h["temperature"],
        )  # fmt: skip
        self.coarse_loss = CoarseInfoNCELoss(
            h["coarse_pos_radius"], h["coarse_ignore_radius"], tuple(h["coarse_z_threshold"]),
            h["coarse_hard_pool"], h["coarse_negatives"], h["coarse_global"], h["temperature"],
        )  # fmt: skip
        self.semantic_loss = SupConMeanLoss(h["semantic_temperature"])

    def configure_optimizers(self) -> Any:
        """SGD with linear warm-up, then a constant rate (mmcv's ``warmup='linear'``)."""
        h = self.hparams
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(
            params, lr=h["lr"], momentum=h["momentum"], weight_decay=h["weight_decay"]
        )
        warm, ratio = h["warmup_iters"], h["warmup_ratio"]

        def factor(step: int) -> float:
            return 1.0 if step >= warm else 1 - (1 - step / warm) * (1 - ratio)

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

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

    def sam_loss(self, batch: Batch) -> dict[str, Tensor]:
        """Fine and coarse InfoNCE losses of a batch of pairs."""
        out, pos, valid = self._embed_pairs(batch)
        fine_pos, coarse_pos = _pool(pos, FINE_STRIDE), _pool(pos, COARSE_STRIDE)
        fine_valid = _pool(valid, FINE_STRIDE)[:, 0] > 0.5
        coarse_valid = _pool(valid, COARSE_STRIDE)[:, 0] > 0.5
        fine, coarse = out["fine"], out["coarse"]
        losses = [
            self.fine_loss(
                (fine[i], fine[i + 1]),
                (coarse[i], coarse[i + 1]),
                (fine_pos[i], fine_pos[i + 1]),
                (fine_valid[i], fine_valid[i + 1]),
            )
            for i in range(0, fine.shape[0], 2)
        ]
        fine_loss = torch.stack(losses).mean()
        coarse_loss = self.coarse_loss(coarse, coarse_pos, coarse_valid)
        return {"loss": fine_loss + coarse_loss, "fine_loss": fine_loss, "coarse_loss": coarse_loss}

    def sam_pp_semantic_loss(self, batch: Batch) -> dict[str, Tensor]:
        """SupConMean loss of the semantic embeddings of labelled inter-volume pairs."""
        x, labels = _pairs(batch, "view"), _pairs(batch, "label")
        sem = self.model(x)["semantic"]
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
        use_semantic = self.hparams["stage"] == "sam_pp" and semantic is not None
        if use_semantic and float(torch.rand(())) < self.hparams["semantic_prob"]:
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
        fine_valid = _pool(valid, FINE_STRIDE)[:, 0] > 0.5
        step = self.hparams["val_grid_step"]
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
                image=image.cpu().numpy() if self.hparams["save_image"] else None,
            )
            written.append(str(path))
        return written
