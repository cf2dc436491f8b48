"""Data module of anatomical-embedding volumes (:mod:`segfm.data.io.embedding_volumes`)."""

from __future__ import annotations

import math
from typing import Any

from segfm.data.base import BaseDataModule
from segfm.data.embedding_datasets import (
    Mode,
    PreparedVolumeDataset,
    Triple,
    ViewPairDataset,
    collate_pairs,
)
from segfm.data.io.checks import Report
from segfm.data.io.embedding_volumes import read_index
from segfm.data.io.embedding_volumes_checks import check_embedding_root
from segfm.transforms.intensity import Window


class EmbeddingPairDataModule(BaseDataModule):
    """Two-view pairs with voxel positions (fit / validate) and whole volumes (test / predict).

    Reads ``<root>/<index_csv>`` (see :mod:`segfm.data.io.embedding_volumes`). Training pairs
    follow the original's SAM pipeline: each view is resampled at ``spacing_mm * s`` mm with
    ``s ~ U(scale_range)`` per view and cut to ``patch_size`` ``(z, y, x)`` voxels; with
    probability ``independent_prob`` the two centres are independent random body voxels,
    otherwise both views contain one random body point (the shared seed); Gaussian noise of
    std ``U(0, noise_std)``. Cross-SAM adds ``rotation_deg`` (5) and ``cross_modal_aug``
    ([0, 1] scaling, histogram shift p 0.9 of which 30 % inverted, blur). With
    ``semantic_pairs > 0`` (SAM++), the training loader is ``{"intra": pairs, "semantic":
    inter-volume labelled pairs}`` (``semantic_index_csv``, crops of ``semantic_patch_size``).
    Any number of volumes works (the original's sampler needed several datasets).

    Validation: ``val_pairs`` reproducible pairs (shared seed, no noise, view scale 1 when
    ``fixed_val_scale``) of the last ``val_fraction`` of the cases (of all cases when there is
    only one). Test / predict: every indexed volume, resampled to ``spacing_mm`` when needed.

    Args:
        root: Data folder.
        index_csv: Index CSV relative to ``root``.
        mode: ``intra``, ``inter`` or ``ct_mr`` (columns ``ct``, ``mr``).
        patch_size: View size ``(z, y, x)`` in voxels (96x96x32 in the original, y-x-z).
        spacing_mm: Voxel size of the views at scale 1.
        scale_range: Range of the per-view scale.
        independent_prob: Probability of independent views.
        seed_margin: Share of the half view within which the shared seed may lie off-centre.
        noise_std: Largest noise std.
        rotation_deg: Largest rotation per axis (Cross-SAM: 5).
        cross_modal_aug: Cross-SAM's intensity augmentation.
        intensity: ``ct``, ``mr``, ``auto`` (by the minimum; ``ct_mr`` by column) or ``none``.
        semantic_pairs: SAM++ inter-volume pairs per batch (0: none).
        semantic_index_csv: Index of the labelled volumes (default ``index_csv``).
        semantic_patch_size: Size of the inter-volume crops.
        samples_per_epoch: Training pairs per epoch (default: the number of volumes).
        val_fraction: Share of the volumes held out for validation.
        val_pairs: Validation pairs.
        fixed_val_scale: Validation views at scale 1. Then the two views differ by a
            translation only, which any convolutional network (an untrained one too) matches
            well, so ``val_med`` would not show learning; by default each view gets its own
            seeded scale in ``scale_range``, as in training.
        batch_size: Pairs per batch.
        num_workers: Loader processes.
    """

    one_sample_splits = ("test", "predict")

    def __init__(
        self,
        root: str,
        index_csv: str = "index.csv",
        mode: Mode = "intra",
        patch_size: Triple = (32, 96, 96),
        spacing_mm: float = 2.0,
        scale_range: tuple[float, float] = (0.8, 1.2),
        independent_prob: float = 0.2,
        seed_margin: float = 1.0,
        noise_std: float = 0.001,
        rotation_deg: float = 0.0,
        cross_modal_aug: bool = False,
        intensity: Window = "auto",
        semantic_pairs: int = 0,
        semantic_index_csv: str | None = None,
        semantic_patch_size: Triple = (60, 90, 90),
        samples_per_epoch: int | None = None,
        val_fraction: float = 0.1,
        val_pairs: int = 4,
        fixed_val_scale: bool = False,
        batch_size: int = 6,
        num_workers: int = 2,
    ) -> None:
        super().__init__(root, batch_size, num_workers)
        checks = {
            "mode": mode in ("intra", "inter", "ct_mr"),
            "patch_size": len(patch_size) == 3 and min(patch_size) >= 1,
            "spacing_mm": spacing_mm > 0,
            "scale_range": 0 < scale_range[0] <= scale_range[1],
            "independent_prob": 0 <= independent_prob <= 1,
            "seed_margin": 0 <= seed_margin <= 1,
            "noise_std": noise_std >= 0,
            "rotation_deg": 0 <= rotation_deg < 90,
            "semantic_pairs": semantic_pairs >= 0,
            "samples_per_epoch": samples_per_epoch is None or samples_per_epoch >= 1,
            "val_fraction": 0 <= val_fraction < 1,
            "val_pairs": val_pairs >= 1,
        }
        for name, ok in checks.items():
            if not ok:
                msg = f"invalid {name}: {locals()[name]!r} (see EmbeddingPairDataModule)"
                raise ValueError(msg)
        self.index_csv, self.mode, self.semantic_index_csv = index_csv, mode, semantic_index_csv
        self.semantic_pairs, self.samples_per_epoch = semantic_pairs, samples_per_epoch
        self.val_fraction, self.val_pairs, self.spacing_mm, self.intensity = (
            val_fraction,
            val_pairs,
            spacing_mm,
            intensity,
        )
        self.options: dict[str, Any] = {
            "patch_size": tuple(patch_size),
            "spacing_mm": spacing_mm,
            "scale_range": tuple(scale_range),
            "independent_prob": independent_prob,
            "seed_margin": seed_margin,
            "noise_std": noise_std,
            "rotation_deg": rotation_deg,
            "cross_modal_aug": cross_modal_aug,
            "intensity": intensity,
            "semantic_patch_size": tuple(semantic_patch_size),
            "fixed_val_scale": fixed_val_scale,
        }

    def setup(self, stage: str) -> None:
        """Read the index and build the datasets of ``stage``."""
        rows = read_index(self.root, self.index_csv, pairs=self.mode == "ct_mr")
        if stage in ("test", "predict"):
            self.datasets[stage] = PreparedVolumeDataset(rows, self.spacing_mm, self.intensity)
            return
        per = 2 if self.mode == "ct_mr" else 1
        cases = len(rows) // per
        held = math.ceil(cases * self.val_fraction) if cases > 1 and self.val_fraction > 0 else 0
        train, val = rows[: (cases - held) * per], rows[(cases - held) * per :] or rows
        length = self.samples_per_epoch or cases - held
        self.datasets["train"] = ViewPairDataset(train, self.mode, length, self.options)
        self.datasets["val"] = ViewPairDataset(
            val, self.mode, self.val_pairs, self.options, fixed_seed=0
        )
        if self.semantic_pairs:
            labelled = read_index(self.root, self.semantic_index_csv or self.index_csv)
            self.datasets["semantic"] = ViewPairDataset(
                labelled,
                "inter",
                length * self.semantic_pairs // self.batch_size or 1,
                self.options,
            )

    def _dataloader(self, split: str) -> Any:
        loader = super()._dataloader(split)
        loader.collate_fn = collate_pairs  # pair keys are stacked too
        return loader

    def train_dataloader(self) -> Any:
        """Pairs; with ``semantic_pairs``, ``{"intra": pairs, "semantic": labelled pairs}``."""
        intra = self._dataloader("train")
        if not self.semantic_pairs:
            return intra
        batch_size, self.batch_size = self.batch_size, self.semantic_pairs
        try:
            semantic = self._dataloader("semantic")
        finally:
            self.batch_size = batch_size
        return {"intra": intra, "semantic": semantic}

    def check_files(self, report: Report, max_cases: int | None) -> None:
        """Check the index CSVs and read every listed volume with its mask and labels."""
        csvs = [self.index_csv]
        if self.semantic_pairs:
            csvs.append(self.semantic_index_csv or self.index_csv)
        pairs = self.mode == "ct_mr"
        check_embedding_root(report, self.root, csvs, pairs, self.intensity, max_cases)
