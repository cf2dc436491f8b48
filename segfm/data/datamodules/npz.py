"""Data module of the CVPR 2025 challenge npz layout (:mod:`segfm.data.io.npz_cvpr`)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from torch.utils.data import DataLoader, Dataset

from segfm.data.base import BaseDataModule
from segfm.data.io.checks import Report
from segfm.data.io.npz_cvpr import (
    CLASS_PROMPTS,
    NpzCase,
    check_label_ids,
    dataset_folders,
    find_evaluation_cases,
    find_training_cases,
    inspect_case,
    read_case,
    read_class_prompts,
)
from segfm.data.io.npz_cvpr_checks import check_npz_root
from segfm.data.loaders import global_seed
from segfm.data.npz_datasets import Entries, NpzPatchDataset, NpzSliceDataset, NpzVolumeDataset
from segfm.data.slice_augment import SliceAugment
from segfm.data.slices25d_datasets import Slice25dDataset, SliceItem, pixel_spacing
from segfm.data.splits import read_split_file, split_cases
from segfm.data.volume_chunks import VolumeChunkSampler
from segfm.errors import DataError
from segfm.sample import Sample
from segfm.transforms.encoding25d import multi_view_axes, plan, slice_axis

_SPLITS_OF = {"fit": ("train", "val"), "validate": ("val",)}
Mode = Literal["volumes", "slices", "slices25d"]


class NpzDataModule(BaseDataModule):
    """The CVPR 2025 challenge npz layout: mixed datasets; 3D patches, 2D or 2.5D slices; volumes.

    The root holds ``class_prompts.json``, ``<DATASET>/train/*.npz`` and evaluation folders
    ``<DATASET>/test`` + ``test_mask`` or ``test`` + ``test_mask`` at the top (see
    :mod:`segfm.data.io.npz_cvpr`). Cases of all selected datasets are pooled; splits are made
    over case ids ``<DATASET>/<file stem>``. Files are checked from their headers in ``setup``
    and fully when read (intensities 0-255, label ids with prompts): errors name the file.

    Samples of ``fit`` / ``validate`` by ``mode``:

    - ``volumes`` (3D methods): ``image`` float32 [1, P, P, P] holding the stored 0-255
      intensities (the methods normalise), ``label`` int64 [1, P, P, P], cropped around the
      bounding box of a random label id present (train, flipped if ``flips``) or the largest one
      (val), padded with 0.
    - ``slices`` (2D methods such as MedSAM): the axial slices with foreground, ``image``
      float32 [3, S, S] min-max scaled to [0, 1] per slice, ``label`` int64 [1, S, S],
      ``spacing`` [2], ``meta`` also {slice_index, path}, as
      :class:`~segfm.data.NpySliceDataModule` yields.
    - ``slices25d`` (BiomedParse v2): every slice of every exported view of the volumes
      (:func:`~segfm.transforms.encoding25d.multi_view_axes`, only axis 0 unless ``multi_view``),
      encoded on the fly as :mod:`segfm.transforms.encoding25d` describes (the pixels
      ``python -m data_tools.process_2d`` writes, see :class:`~segfm.data.PngSliceDataModule`):
      ``image`` float32 [3, S, S] of raw 0-255 values (channels: the slice, the one before, the
      one after), ``label`` int64 [1, S, S], ``classes`` of *all* the dataset's classes (absent
      ones serve as negatives), ``spacing`` [2] mm of the encoded pixels, ``meta`` also
      {slice_index, axis, file_name (the tool's PNG name)}; training slices augmented
      (:class:`~segfm.data.slice_augment.SliceAugment`) when ``augment``. Each loading process
      keeps ``cache_volumes_mb`` of decoded volumes; ``volume_chunk`` slices of one volume are
      handed out together (:class:`~segfm.data.volume_chunks.VolumeChunkSampler`).

    Samples of ``test`` / ``predict`` (one per batch): the whole evaluation volumes, ``image``
    float32 [1, D, H, W] (0-255), ``label`` int64 [1, D, H, W] when ``test_mask`` has the case,
    ``meta`` also {file_name (to write ``<output>/<file_name>``), boxes ({class id: box} or
    None), text_prompts ({class id: prompt} or None)}. Without any evaluation folder they are
    the held-out training cases (``test_fraction`` or the split file's ``test``); training
    files carry no prompts, so their ``meta`` has no ``boxes`` key and the interactive protocol
    draws their boxes from the mask (as for the validation volumes of ``fit``).

    All samples: ``classes`` {id: ClassInfo(first prompt, all prompts)}; in instance datasets
    the label holds instance ids and ``classes`` is {1: the single class}. ``spacing`` float32
    (z, y, x) mm; ``meta`` {case_id, dataset, source (the npz), instance}.

    Args:
        root: Folder with ``class_prompts.json``.
        datasets: Dataset names to use; ``None`` takes every dataset of ``class_prompts.json``.
        batch_size: Patches or slices per training / validation batch.
        num_workers: Loader processes.
        mode: ``"volumes"`` (3D patches), ``"slices"`` (2D slices) or ``"slices25d"`` (2.5D
            slices) for fit and validate.
        patch_size: Side of the 3D patches in voxels.
        image_size: Side of the 2D and 2.5D slices in pixels (512 for BiomedParse's weights).
        flips: Random flips of training patches (``mode="volumes"``).
        augment: Augment training 2.5D slices (``mode="slices25d"``).
        multi_view: Also slice isotropic near-cubic volumes along their other two axes, as
            ``data_tools.process_2d`` does (``mode="slices25d"``).
        cache_volumes_mb: Decoded volumes each loading process keeps (least recently used
            dropped first), in MiB; 0 decodes the npz for every slice (``mode="slices25d"``).
        volume_chunk: Training slices handed out together from one volume: a worker then
            decodes a volume once per chunk, and a batch mixes ``batch_size / volume_chunk``
            volumes; 1 shuffles slices freely (``mode="slices25d"``).
        val_fraction: Share of training cases for validation (at least one if > 0).
        test_fraction: Share of training cases held out for test, used by test / predict only
            when the root has no evaluation folder; 0 keeps every case for training.
        split_seed: Seed of the random case split.
        split_file: JSON ``{"train": [...], "val": [...], "test": [...]}`` of case ids
            (``<DATASET>/<file stem>``); replaces the fractions.
        max_cases: Use at most this many cases per split (quick runs).
    """

    one_sample_splits = ("test", "predict")

    def __init__(
        self,
        root: str,
        datasets: list[str] | None = None,
        batch_size: int = 2,
        num_workers: int = 2,
        mode: Mode = "volumes",
        patch_size: int = 128,
        image_size: int = 256,
        flips: bool = True,
        augment: bool = True,
        multi_view: bool = True,
        cache_volumes_mb: int = 512,
        volume_chunk: int = 1,
        val_fraction: float = 0.1,
        test_fraction: float = 0.0,
        split_seed: int = 0,
        split_file: str | None = None,
        max_cases: int | None = None,
    ) -> None:
        super().__init__(root, batch_size, num_workers)
        checks = {
            "mode": (mode, mode in ("volumes", "slices", "slices25d")),
            "patch_size": (patch_size, patch_size >= 1),
            "image_size": (image_size, image_size >= 1),
            "cache_volumes_mb": (cache_volumes_mb, cache_volumes_mb >= 0),
            "volume_chunk": (volume_chunk, volume_chunk >= 1),
            "val_fraction": (val_fraction, 0 <= val_fraction < 1),
            "test_fraction": (test_fraction, 0 <= test_fraction < 1),
            "val_fraction + test_fraction": (
                val_fraction + test_fraction,
                val_fraction + test_fraction < 1,
            ),
            "max_cases": (max_cases, max_cases is None or max_cases >= 1),
        }
        for name, (value, ok) in checks.items():
            if not ok:
                msg = f"invalid {name}: {value!r} (see {type(self).__name__}'s documentation)"
                raise ValueError(msg)
        self.dataset_names = None if datasets is None else list(datasets)
        self.mode, self.patch_size, self.image_size = mode, patch_size, image_size
        self.flips, self.augment, self.multi_view = flips, augment, multi_view
        self.cache_volumes_mb, self.volume_chunk = cache_volumes_mb, volume_chunk
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.split_seed, self.split_file, self.max_cases = split_seed, split_file, max_cases

    @property
    def prompts_file(self) -> Path:
        """The root's ``class_prompts.json``."""
        return self.root / CLASS_PROMPTS

    def _selected(self, entries: Entries) -> list[str]:
        """The datasets to use, after checking that every dataset folder has an entry."""
        for name in dataset_folders(self.root):
            if name not in entries:
                msg = (
                    f"{self.root / name} has no entry in {self.prompts_file}; add one "
                    '({"1": [prompts], "instance_label": 0}) or move the folder out of the root'
                )
                raise DataError(msg)
        if self.dataset_names is None:
            return sorted(entries)
        for name in self.dataset_names:
            if name not in entries:
                msg = f"dataset {name!r} has no entry in {self.prompts_file}; add one or drop it"
                raise DataError(msg)
        return sorted(set(self.dataset_names))

    def _training_splits(self, cases: list[NpzCase]) -> dict[str, list[NpzCase]]:
        """Split the training cases (by case id)."""
        by_id = {case.case_id: case for case in cases}
        if self.split_file is not None:
            ids = read_split_file(self.split_file, list(by_id))
        elif not cases:
            ids = {"train": [], "val": [], "test": []}
        else:
            ids = split_cases(list(by_id), self.val_fraction, self.test_fraction, self.split_seed)
        return {split: [by_id[i] for i in ids[split]][: self.max_cases] for split in ids}

    def _index_slices(self, cases: list[NpzCase], entries: Entries) -> list[tuple[NpzCase, int]]:
        """The ``(case, z)`` slices with foreground (reads every label once)."""
        slices = []
        for case in cases:
            volume = read_case(case, read_image=False)
            if volume.label is None:
                msg = f"{case.path} has no 'gts' array; training cases need their labels"
                raise DataError(msg)
            ids = np.unique(volume.label).tolist()
            check_label_ids(ids, case.path, case.dataset, entries[case.dataset], self.prompts_file)
            flat = volume.label.reshape(volume.label.shape[0], -1)
            slices += [(case, int(z)) for z in np.flatnonzero(flat.any(axis=1))]
        return slices

    def _training_cases(self, names: list[str]) -> list[NpzCase]:
        """The training cases of the selected datasets."""
        return find_training_cases(self.root, names)

    def _slice_items(self, case: NpzCase) -> list[SliceItem]:
        """Every 2.5D slice of every exported view of a training volume."""
        shape = inspect_case(case, need_label=True)
        spacing = read_case(case, read_image=False, read_label=False).spacing
        axes = multi_view_axes(shape, spacing) if self.multi_view else [slice_axis(shape)]
        geometries = {axis: plan(shape, self.image_size, axis) for axis in axes}
        return [
            SliceItem(case, axis, index, geometry, pixel_spacing(geometry, spacing))
            for axis, geometry in geometries.items()
            for index in range(geometry.num_slices)
        ]

    def _dataset(self, split: str, cases: list[NpzCase], entries: Entries) -> Dataset[Sample]:
        """The dataset of a training or validation split in this ``mode``."""
        if self.mode == "slices25d":
            items = [item for case in cases for item in self._slice_items(case)]
            augment = SliceAugment() if self.augment and split == "train" else None
            cache = self.cache_volumes_mb * 2**20
            size = self.image_size
            return Slice25dDataset(items, entries, self.prompts_file, size, augment, cache)
        for case in cases:
            inspect_case(case, need_label=True)
        if self.mode == "volumes":
            return NpzPatchDataset(
                cases, entries, self.prompts_file, self.patch_size, split == "train", self.flips
            )
        slices = self._index_slices(cases, entries)
        if split == "train" and not slices:
            msg = f"no training case of {self.root} has foreground; check the labels"
            raise DataError(msg)
        return NpzSliceDataset(slices, entries, self.prompts_file, self.image_size)

    def setup(self, stage: str) -> None:
        """Find and check the cases and build the datasets of ``stage``.

        Args:
            stage: ``fit``, ``validate``, ``test`` or ``predict``.

        Raises:
            DataError: If the files are inconsistent or a needed split has no case.
        """
        entries = read_class_prompts(self.prompts_file)
        names = self._selected(entries)
        training = self._training_cases(names)
        if stage in ("test", "predict"):
            cases = find_evaluation_cases(self.root, names, entries)[: self.max_cases]
            evaluation_files = bool(cases)
            if not cases:
                cases = self._training_splits(training)["test"]
            if not cases:
                msg = (
                    f"no evaluation case in {self.root}: add <DATASET>/test (+ test_mask) or "
                    "test (+ test_mask) folders, or hold out training cases with test_fraction"
                )
                raise DataError(msg)
            for case in cases:
                inspect_case(case)
            self.datasets[stage] = NpzVolumeDataset(cases, entries, evaluation_files)
            return
        if not training:
            msg = f"no training case in {self.root}/<DATASET>/train for the datasets {names}"
            raise DataError(msg)
        splits = self._training_splits(training)
        for split in _SPLITS_OF[stage]:
            cases = splits[split]
            if not cases and (split == "train" or stage == "validate"):
                msg = f"no {split} case in {self.root}: raise val_fraction or fill the split_file"
                raise DataError(msg)
            self.datasets[split] = self._dataset(split, cases, entries)
            if split == "val" and cases:  # the protocol's cases during fit
                self.datasets["val_volumes"] = NpzVolumeDataset(cases, entries, False)

    def train_dataloader(self) -> DataLoader[Sample]:
        """Shuffled samples (2.5D: ``volume_chunk`` at a time from one volume); resumable."""
        dataset = self.datasets.get("train")
        if self.volume_chunk == 1 or not isinstance(dataset, Slice25dDataset):
            return super().train_dataloader()
        groups, chunk = dataset.groups(), self.volume_chunk
        return self._ordered_loader(
            dataset,
            lambda replicas, rank: VolumeChunkSampler(
                dataset, groups, chunk, global_seed(), replicas, rank
            ),
        )

    def check_files(self, report: Report, max_cases: int | None) -> None:
        """Check every npz, ``class_prompts.json`` and the label ids' prompts (see ``verify``)."""
        check_npz_root(report, self.root, self.dataset_names, max_cases)
