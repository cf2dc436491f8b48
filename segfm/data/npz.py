"""Data module of the CVPR 2025 challenge npz layout (:mod:`segfm.data.io.npz_cvpr`)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from segfm.data.base import BaseDataModule
from segfm.data.io.npz_cvpr import (
    CLASS_PROMPTS,
    DatasetEntry,
    NpzCase,
    NpzVolume,
    check_label_ids,
    class_infos,
    dataset_folders,
    find_evaluation_cases,
    find_training_cases,
    inspect_case,
    read_case,
    read_class_prompts,
)
from segfm.sample import Sample
from segfm.data.splits import read_split_file, split_cases
from segfm.data.transforms3d import crop_box, crop_or_pad, random_flips
from segfm.errors import DataError

Entries = dict[str, DatasetEntry]
_SPLITS_OF = {"fit": ("train", "val"), "validate": ("val",)}


def _labelled(case: NpzCase, entries: Entries, prompts_file: Path) -> NpzVolume:
    """Read a training case; its label must exist and its ids must have prompts."""
    volume = read_case(case)
    if volume.label is None:
        msg = f"{case.path} has no 'gts' array; training cases need their labels"
        raise DataError(msg)
    ids = np.unique(volume.label)
    check_label_ids(ids.tolist(), case.path, case.dataset, entries[case.dataset], prompts_file)
    return volume


def _meta(case: NpzCase, entries: Entries) -> dict[str, object]:
    """The ``meta`` keys every sample has."""
    return {
        "case_id": case.case_id,
        "dataset": case.dataset,
        "source": str(case.path),
        "instance": entries[case.dataset].instance,
    }


class NpzPatchDataset(Dataset[Sample]):
    """One cubic patch per case around the bounding box of a class (or instance).

    Random (training): a label id present is drawn, then flips on each axis (p = 0.5) if
    ``flips``. Fixed (validation): the largest id, no flip. A case without foreground gives its
    central patch. Image intensities stay 0-255 (as float32); outside the volume is 0.

    Args:
        cases: The cases (with ``gts``).
        entries: Dataset name to its ``class_prompts.json`` entry.
        prompts_file: ``class_prompts.json`` (named in errors).
        patch_size: Side of the patch in voxels.
        random: Draw the id and flips (training) or not (validation).
        flips: Random flips (only when ``random``).
    """

    def __init__(
        self,
        cases: list[NpzCase],
        entries: Entries,
        prompts_file: Path,
        patch_size: int,
        random: bool,
        flips: bool = True,
    ) -> None:
        self.cases, self.entries, self.prompts_file = cases, entries, prompts_file
        self.patch_size, self.random, self.flips = patch_size, random, flips
        self.classes = {name: class_infos(entry) for name, entry in entries.items()}

    def __len__(self) -> int:
        return len(self.cases)

    def _centre(self, label: np.ndarray) -> list[float]:
        """Bounding-box centre (voxels) of the drawn or largest label id; the volume's if none."""
        ids, counts = np.unique(label, return_counts=True)
        counts, ids = counts[ids != 0], ids[ids != 0]
        if not ids.size:
            return [(n - 1) / 2 for n in label.shape]
        pick = int(torch.randint(ids.size, ())) if self.random else int(np.argmax(counts))
        where = np.nonzero(label == ids[pick])
        return [(int(axis.min()) + int(axis.max())) / 2 for axis in where]

    def __getitem__(self, index: int) -> Sample:
        """Sample ``image`` float32 [1, P, P, P] (0-255), ``label`` int64 [1, P, P, P]."""
        case = self.cases[index]
        volume = _labelled(case, self.entries, self.prompts_file)
        assert volume.image is not None and volume.label is not None  # read_case read both
        box = crop_box(self._centre(volume.label), (self.patch_size,) * 3)
        image, label = crop_or_pad(volume.image, box, 0), crop_or_pad(volume.label, box, 0)
        if self.random and self.flips:
            image, label = random_flips([image, label])
        return {
            "image": torch.from_numpy(image.astype(np.float32))[None],
            "label": torch.from_numpy(label.astype(np.int64))[None],
            "classes": self.classes[case.dataset],
            "spacing": torch.from_numpy(volume.spacing).float(),  # (z, y, x)
            "meta": _meta(case, self.entries),
        }


class NpzSliceDataset(Dataset[Sample]):
    """One 2D sample per axial slice, resized and scaled as MedSAM's npy slices.

    Each sample reads (decompresses) its whole case: for large sets, prefer fewer epochs over
    many small cases or the npy-slice layout (:class:`~segfm.data.NpySliceDataModule`).

    Args:
        slices: ``(case, z index)`` pairs.
        entries: Dataset name to its ``class_prompts.json`` entry.
        prompts_file: ``class_prompts.json`` (named in errors).
        image_size: Side of the returned slices (bilinear image, nearest label).
    """

    def __init__(
        self,
        slices: list[tuple[NpzCase, int]],
        entries: Entries,
        prompts_file: Path,
        image_size: int,
    ) -> None:
        self.slices, self.entries, self.prompts_file = slices, entries, prompts_file
        self.image_size = image_size
        self.classes = {name: class_infos(entry) for name, entry in entries.items()}

    def __len__(self) -> int:
        return len(self.slices)

    def __getitem__(self, index: int) -> Sample:
        """Sample ``image`` float32 [3, S, S] in [0, 1], ``label`` int64 [1, S, S], ``spacing`` [2].

        The slice is resized (image bilinear with antialiasing, label nearest), then min-max
        scaled to [0, 1] over the slice and repeated in three channels.
        """
        case, z = self.slices[index]
        volume = _labelled(case, self.entries, self.prompts_file)
        assert volume.image is not None and volume.label is not None  # read_case read both
        image = torch.from_numpy(volume.image[z].astype(np.float32))[None, None]  # [1, 1, H, W]
        label = torch.from_numpy(volume.label[z].astype(np.int64))[None, None]
        size = (self.image_size, self.image_size)
        shape = tuple(image.shape[2:])
        if shape != size:
            image = F.interpolate(image, size, mode="bilinear", align_corners=False, antialias=True)
            label = F.interpolate(label.double(), size, mode="nearest-exact").long()
        low, high = image.min(), image.max()
        image = (image[0] - low) / torch.clamp(high - low, min=1e-8)
        # the slice covers the same field of view, whatever its pixel count
        spacing = torch.from_numpy(volume.spacing[1:] * np.asarray(shape) / np.asarray(size))
        return {
            "image": image.repeat(3, 1, 1),
            "label": label[0],
            "classes": self.classes[case.dataset],
            "spacing": spacing.float(),
            "meta": _meta(case, self.entries) | {"slice_index": z, "path": str(case.path)},
        }


def _box_map(volume: NpzVolume, case: NpzCase) -> dict[int, dict[str, int]] | None:
    """The ``boxes`` keyed by class id.

    The list is in sorted class order over the classes of the case: the label's ids when known,
    else the ``text_prompts`` ids when there are as many, else 1..N (the challenge relabels the
    ground truth of box cases to consecutive ids).
    """
    if volume.boxes is None:
        return None
    n = len(volume.boxes)
    if volume.label is not None:
        ids = [int(i) for i in np.unique(volume.label) if i != 0]
        if len(ids) != n:
            msg = (
                f"{case.path} has {n} boxes but {case.mask or case.path} has {len(ids)} label ids "
                f"{ids}; give one box per class present, in sorted class order"
            )
            raise DataError(msg)
    elif volume.text_prompts is not None and len(volume.text_prompts) == n:
        ids = list(volume.text_prompts)
    else:
        ids = list(range(1, n + 1))
    return dict(zip(ids, volume.boxes, strict=True))


class NpzVolumeDataset(Dataset[Sample]):
    """One sample per evaluation case: the whole volume, with its prompts.

    Args:
        cases: The cases; ``label`` only where the ground truth is known.
        entries: Dataset name to its ``class_prompts.json`` entry.
    """

    def __init__(self, cases: list[NpzCase], entries: Entries) -> None:
        self.cases, self.entries = cases, entries
        self.classes = {name: class_infos(entry) for name, entry in entries.items()}

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, index: int) -> Sample:
        """Sample ``image`` float32 [1, D, H, W] (0-255), ``label`` int64 [1, D, H, W] if known."""
        case = self.cases[index]
        volume = read_case(case, read_prompts=True)
        assert volume.image is not None  # read_case read it
        sample: Sample = {
            "image": torch.from_numpy(volume.image.astype(np.float32))[None],
            "classes": self.classes[case.dataset],
            "spacing": torch.from_numpy(volume.spacing).float(),  # (z, y, x)
            "meta": _meta(case, self.entries)
            | {
                "file_name": case.path.name,
                "boxes": _box_map(volume, case),
                "text_prompts": volume.text_prompts,
            },
        }
        if volume.label is not None:
            sample["label"] = torch.from_numpy(volume.label.astype(np.int64))[None]
        return sample


class NpzDataModule(BaseDataModule):
    """The CVPR 2025 challenge npz layout: mixed datasets, 3D patches or 2D slices, whole volumes.

    The root holds ``class_prompts.json``, ``<DATASET>/train/*.npz`` and evaluation folders
    ``<DATASET>/test`` + ``test_mask`` or ``test`` + ``test_mask`` at the top (see
    :mod:`segfm.data.io.npz_cvpr`). Cases of all selected datasets are pooled; splits are made
    over case ids ``<DATASET>/<file stem>``. Files are checked from their headers in ``setup``
    and fully when read (intensities 0-255, label ids with prompts): errors name the file.

    Samples of ``fit`` / ``validate`` with ``mode="volumes"``: ``image`` float32 [1, P, P, P]
    holding the stored 0-255 intensities (the methods normalise), ``label`` int64 [1, P, P, P],
    cropped around the bounding box of a random label id present (train, flipped if ``flips``)
    or the largest one (val), padded with 0. With ``mode="slices"`` (2D methods such as MedSAM):
    the axial slices with foreground, ``image`` float32 [3, S, S] min-max scaled to [0, 1] per
    slice, ``label`` int64 [1, S, S], ``spacing`` [2], ``meta`` also {slice_index, path}, as
    :class:`~segfm.data.NpySliceDataModule` yields.

    Samples of ``test`` / ``predict`` (one per batch): the whole evaluation volumes, ``image``
    float32 [1, D, H, W] (0-255), ``label`` int64 [1, D, H, W] when ``test_mask`` has the case,
    ``meta`` also {file_name (to write ``<output>/<file_name>``), boxes ({class id: box} or
    None), text_prompts ({class id: prompt} or None)}. Without any evaluation folder they are
    the held-out training cases (``test_fraction`` or the split file's ``test``).

    All samples: ``classes`` {id: ClassInfo(first prompt, all prompts)}; in instance datasets
    the label holds instance ids and ``classes`` is {1: the single class}. ``spacing`` float32
    (z, y, x) mm; ``meta`` {case_id, dataset, source (the npz), instance}.

    Args:
        root: Folder with ``class_prompts.json``.
        datasets: Dataset names to use; ``None`` takes every dataset of ``class_prompts.json``.
        batch_size: Patches or slices per training / validation batch.
        num_workers: Loader processes.
        mode: ``"volumes"`` (3D patches) or ``"slices"`` (2D slices) for fit and validate.
        patch_size: Side of the 3D patches in voxels.
        image_size: Side of the 2D slices in pixels.
        flips: Random flips of training patches (``mode="volumes"``).
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
        mode: Literal["volumes", "slices"] = "volumes",
        patch_size: int = 128,
        image_size: int = 256,
        flips: bool = True,
        val_fraction: float = 0.1,
        test_fraction: float = 0.0,
        split_seed: int = 0,
        split_file: str | None = None,
        max_cases: int | None = None,
    ) -> None:
        super().__init__(root, batch_size, num_workers)
        checks = {
            "mode": (mode, mode in ("volumes", "slices")),
            "patch_size": (patch_size, patch_size >= 1),
            "image_size": (image_size, image_size >= 1),
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
                msg = f"invalid {name}: {value!r} (see NpzDataModule's documentation)"
                raise ValueError(msg)
        self.dataset_names = None if datasets is None else list(datasets)
        self.mode, self.patch_size, self.image_size, self.flips = (
            mode,
            patch_size,
            image_size,
            flips,
        )
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

    def setup(self, stage: str) -> None:
        """Find and check the cases and build the datasets of ``stage``.

        Args:
            stage: ``fit``, ``validate``, ``test`` or ``predict``.

        Raises:
            DataError: If the files are inconsistent or a needed split has no case.
        """
        entries = read_class_prompts(self.prompts_file)
        names = self._selected(entries)
        training = find_training_cases(self.root, names)
        if stage in ("test", "predict"):
            cases = find_evaluation_cases(self.root, names, entries)[: self.max_cases]
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
            self.datasets[stage] = NpzVolumeDataset(cases, entries)
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
            for case in cases:
                inspect_case(case, need_label=True)
            if self.mode == "volumes":
                self.datasets[split] = NpzPatchDataset(
                    cases, entries, self.prompts_file, self.patch_size, split == "train",
                    self.flips,
                )  # fmt: skip
                continue
            slices = self._index_slices(cases, entries)
            if split == "train" and not slices:
                msg = f"no training case of {self.root} has foreground; check the labels"
                raise DataError(msg)
            self.datasets[split] = NpzSliceDataset(
                slices, entries, self.prompts_file, self.image_size
            )
