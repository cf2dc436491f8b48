"""Data module of SegVol's M3D-Seg layout (:mod:`segfm.data.io.m3d_seg`), pseudo masks included."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence, Sized
from typing import Literal

import torch
from torch.utils.data import DataLoader

from segfm.data.base import BaseDataModule
from segfm.data.io.checks import Report
from segfm.data.io.m3d_seg import (
    M3DCase,
    check_case,
    read_dataset,
)
from segfm.data.io.m3d_seg_checks import check_m3d_root
from segfm.data.loaders import EpochShuffleSampler, global_seed
from segfm.data.m3d_datasets import M3DSegDataset, training_transform
from segfm.data.splits import split_cases
from segfm.errors import ConfigError, DataError
from segfm.sample import ClassInfo, Sample


class DatasetBatchSampler(EpochShuffleSampler):
    """Batches drawn from one dataset code each, shuffled within and across codes per epoch.

    The indices come out batch by batch, so a loader with the same ``batch_size`` cuts them into
    single-dataset batches (SegVol's ``BatchedDistributedSampler``). Unlike the original, no case
    is dropped: a code's last batch is filled with repeats of its own cases, and the batches are
    repeated until every replica gets as many (the original gave the last rank the remainder,
    which stalls DDP). Replica ``r`` takes batches ``r, r + R, ...`` of the epoch's order, drawn
    from ``seed + epoch``. Being an :class:`~segfm.data.loaders.EpochShuffleSampler`, it drives a
    :class:`~segfm.data.loaders.ResumableDataLoader` (resumed mid-epoch, per-sample seeded
    augmentation) and Lightning keeps it under DDP.

    Args:
        dataset: The dataset (only its length is used).
        groups: Dataset indices of each code.
        batch_size: Samples per batch.
        num_replicas: Processes (``trainer.world_size``).
        rank: This process (``trainer.global_rank``).
        shuffle: Shuffle within and across codes.
        seed: Base seed of the orders.
    """

    def __init__(
        self,
        dataset: Sized,
        groups: Sequence[Sequence[int]],
        batch_size: int,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__(dataset, seed=seed, num_replicas=num_replicas, rank=rank)
        if batch_size < 1:
            msg = f"batch_size must be >= 1, got {batch_size}"
            raise ValueError(msg)
        self.shuffle = shuffle
        self.groups = [list(group) for group in groups if len(group)]
        self.batch_size = batch_size
        batches = sum(math.ceil(len(group) / batch_size) for group in self.groups)
        self.batches_per_replica = math.ceil(batches / num_replicas)
        self.num_samples = self.batches_per_replica * batch_size
        self.total_size = self.num_samples * num_replicas

    def batches(self) -> list[list[int]]:
        """All batches of the current epoch, before the split over replicas."""
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        batches = []
        for group in self.groups:
            if self.shuffle:
                group = [group[i] for i in torch.randperm(len(group), generator=generator)]
            filled = group * math.ceil(self.batch_size / len(group)) if group else group
            padded = group + filled[: -len(group) % self.batch_size]
            batches += [
                padded[i : i + self.batch_size] for i in range(0, len(padded), self.batch_size)
            ]
        if self.shuffle:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=generator)]
        total = self.batches_per_replica * self.num_replicas
        return (batches * math.ceil(total / max(len(batches), 1)))[:total]

    def order(self) -> list[int]:
        """This rank's indices of the current epoch, batch after batch."""
        mine = self.batches()[self.rank :: self.num_replicas]
        return [i for batch in mine for i in batch]


class M3DSegDataModule(BaseDataModule):
    """SegVol's M3D-Seg datasets side by side, each training batch from one dataset code.

    The root holds ``<code>/<code>.json`` and the cases (:mod:`segfm.data.io.m3d_seg`, written by
    ``data_tools.build_dataset``). Training cases are the json's ``train`` lists, less
    ``val_ratio`` of each code for validation; test and predict take the ``test`` lists.

    Training samples: ``image`` float32 [1, *spatial_size] (the stored z-score min-max scaled
    to [0, 1] over the volume, then :func:`training_transform`), ``label`` int64 with the json's
    class ids, and, with ``use_pseudo_masks``, ``pseudo_label`` int64 (-1 = ignore): the case's
    ``pseudo_mask.npy`` resized to the image grid by nearest neighbour, transformed with the
    label, then cleansed (:func:`~segfm.data.io.m3d_seg.cleanse_pseudo_mask`). A case without
    ``pseudo_mask.npy`` gives an all -1 ``pseudo_label`` (no self-supervised signal), so batches
    keep one set of keys; ``setup`` warns how many cases lack it. Batches come from
    :class:`DatasetBatchSampler` through a resumable loader.

    Validation, test and predict samples (one per batch): the whole volume, ``image`` min-max
    scaled, ``label`` [1, Z, Y, X] of the stored (X, Y, Z) arrays transposed.

    All samples: ``classes`` {id: ClassInfo(name, (name,))} from the json's ``labels``;
    ``spacing`` float32 (z, y, x) mm from the json entry's ``affine`` (written by
    ``data_tools.build_dataset``), else 1 mm (the downloaded M3D-Seg stores no voxel size), scaled
    by the training resize; ``meta`` {case_id ``<code>/<case>``, dataset (the code), source
    (``image.npy``), label_source (mask file), original_shape (X, Y, Z) as stored, transpose
    (2, 1, 0) from stored to sample axes, affine (of the stored axes, or None), instance False}.

    Args:
        root: The M3D-Seg root.
        dataset_codes: Codes (folder names) of the datasets to use, e.g. ``["0000", "0001"]``.
        batch_size: Training samples per batch.
        num_workers: Loader processes.
        spatial_size: ``(D, H, W)`` of the training samples.
        use_pseudo_masks: Add ``pseudo_label`` to training samples.
        val_ratio: Share of each code's training cases held out for validation (0: none).
        split_seed: Seed of that split.
        flip_prob: Probability of a flip, per axis.
        intensity_prob: Probability of the intensity scale, and of the shift.
        crop_prob: Share of training samples that are random crops at the stored resolution
            (SegVol: 0.5); the others are whole volumes resized to ``spatial_size``, what the
            zoom-out sees at test time.
        resize_mode: Interpolation of the training images' resize: ``area`` (SegVol) or
            ``nearest-exact`` (the zoom-out's resize of a test volume).
    """

    one_sample_splits = ("val", "test", "predict")

    def __init__(
        self,
        root: str,
        dataset_codes: list[str],
        batch_size: int = 4,
        num_workers: int = 2,
        spatial_size: tuple[int, int, int] = (32, 256, 256),
        use_pseudo_masks: bool = True,
        val_ratio: float = 0.0,
        split_seed: int = 0,
        flip_prob: float = 0.2,
        intensity_prob: float = 0.1,
        crop_prob: float = 0.5,
        resize_mode: Literal["area", "nearest-exact"] = "area",
    ) -> None:
        super().__init__(root, batch_size, num_workers)
        checks = {
            "dataset_codes": (dataset_codes, len(dataset_codes) > 0),
            "spatial_size": (spatial_size, len(spatial_size) == 3 and min(spatial_size) >= 1),
            "val_ratio": (val_ratio, 0 <= val_ratio < 1),
            "flip_prob": (flip_prob, 0 <= flip_prob <= 1),
            "intensity_prob": (intensity_prob, 0 <= intensity_prob <= 1),
            "crop_prob": (crop_prob, 0 <= crop_prob <= 1),
            "resize_mode": (resize_mode, resize_mode in ("area", "nearest-exact")),
        }
        for name, (value, ok) in checks.items():
            if not ok:
                msg = f"invalid {name}: {value!r} (see M3DSegDataModule's documentation)"
                raise ValueError(msg)
        self.dataset_codes = list(dict.fromkeys(dataset_codes))
        self.spatial_size = tuple(spatial_size)
        self.use_pseudo_masks, self.val_ratio, self.split_seed = (
            use_pseudo_masks,
            val_ratio,
            split_seed,
        )
        self.flip_prob, self.intensity_prob = flip_prob, intensity_prob
        self.crop_prob, self.resize_mode = crop_prob, resize_mode

    def _split(self, cases: list[M3DCase]) -> tuple[list[M3DCase], list[M3DCase]]:
        """Hold out ``val_ratio`` of one code's training cases."""
        if self.val_ratio == 0:
            return cases, []
        ids = split_cases([c.case_id for c in cases], self.val_ratio, 0.0, self.split_seed)
        val = set(ids["val"])
        return [c for c in cases if c.case_id not in val], [c for c in cases if c.case_id in val]

    def setup(self, stage: str) -> None:
        """Read the jsons, check the cases' files and build the datasets of ``stage``.

        Args:
            stage: ``fit``, ``validate``, ``test`` or ``predict``.

        Raises:
            DataError: If a json or case is missing or inconsistent, or a needed split is empty.
        """
        datasets = [read_dataset(self.root, code) for code in self.dataset_codes]
        classes = {
            d.code: {i: ClassInfo(name, (name,)) for i, name in d.labels.items()} for d in datasets
        }
        if stage in ("test", "predict"):
            cases = [case for d in datasets for case in d.test]
            splits = {stage: cases}
        else:
            held = [self._split(d.train) for d in datasets]
            splits = {
                "train": [c for t, _ in held for c in t],
                "val": [c for _, v in held for c in v],
            }
            if stage == "validate":
                splits = {"val": splits["val"]}
        for split, cases in splits.items():
            if not cases and (split != "val" or stage == "validate"):
                msg = (
                    f"no {split} case in the datasets {self.dataset_codes} of {self.root}: check "
                    f"the jsons' {'test' if split in ('test', 'predict') else 'train'} lists"
                    + (" or raise val_ratio" if split == "val" else "")
                )
                raise DataError(msg)
            for case in cases:
                check_case(case)
            if split != "train":
                self.datasets[split] = M3DSegDataset(cases, classes)
                if split == "val" and cases:  # validation already yields whole volumes
                    self.datasets["val_volumes"] = self.datasets[split]
                continue
            pseudo = self.use_pseudo_masks
            missing = sum(not case.pseudo_mask.is_file() for case in cases) if pseudo else 0
            if missing:
                warnings.warn(
                    f"{missing} of {len(cases)} training cases have no pseudo_mask.npy; their "
                    "pseudo_label is all -1 (ignored): run python -m data_tools.build_pseudo_mask "
                    "or set use_pseudo_masks: false",
                    stacklevel=2,
                )
            transform = training_transform(
                self.spatial_size,
                pseudo,
                self.flip_prob,
                self.intensity_prob,
                self.crop_prob,
                self.resize_mode,
            )
            self.datasets["train"] = M3DSegDataset(cases, classes, transform, pseudo)

    def train_dataloader(self) -> DataLoader[Sample]:
        """Single-dataset batches (:class:`DatasetBatchSampler`), resumable mid-epoch."""
        dataset = self.datasets.get("train")
        if not isinstance(dataset, M3DSegDataset):
            msg = "M3DSegDataModule has no 'train' data: run setup('fit') first (the Trainer does)"
            raise ConfigError(msg)
        groups, size = dataset.groups, self.batch_size
        return self._ordered_loader(
            dataset,
            lambda replicas, rank: DatasetBatchSampler(
                dataset, groups, size, replicas, rank, seed=global_seed()
            ),
        )

    def check_files(self, report: Report, max_cases: int | None) -> None:
        """Check the json of every dataset code and each case's image and mask headers."""
        check_m3d_root(report, self.root, self.dataset_codes, max_cases)
