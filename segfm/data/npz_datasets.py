"""Datasets over the CVPR 2025 npz layout: 3D patches, 2D slices and whole volumes to test."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from segfm.data.io.npz_cvpr import (
    DatasetEntry,
    NpzCase,
    NpzVolume,
    check_label_ids,
    class_infos,
    read_case,
)
from segfm.data.transforms3d import crop_box, crop_or_pad, random_flips
from segfm.errors import DataError
from segfm.sample import Sample

Entries = dict[str, DatasetEntry]


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
        evaluation_files: The cases are the challenge's evaluation files, whose prompts
            (``boxes``, ``text_prompts``) are part of the case: ``meta`` then has a ``boxes``
            key, None when the file has none, and the interactive protocol skips the box step
            as the challenge does. False for training files (validation and held-out cases),
            which never carry prompts: their boxes come from the mask, as the challenge's
            ``get_boxes.py`` made the evaluation files' boxes.
    """

    def __init__(
        self, cases: list[NpzCase], entries: Entries, evaluation_files: bool = True
    ) -> None:
        self.cases, self.entries = cases, entries
        self.evaluation_files = evaluation_files
        self.classes = {name: class_infos(entry) for name, entry in entries.items()}

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, index: int) -> Sample:
        """Sample ``image`` float32 [1, D, H, W] (0-255), ``label`` int64 [1, D, H, W] if known."""
        case = self.cases[index]
        volume = read_case(case, read_prompts=True)
        assert volume.image is not None  # read_case read it
        meta = _meta(case, self.entries) | {
            "file_name": case.path.name,
            "text_prompts": volume.text_prompts,
        }
        if self.evaluation_files:
            meta["boxes"] = _box_map(volume, case)
        sample: Sample = {
            "image": torch.from_numpy(volume.image.astype(np.float32))[None],
            "classes": self.classes[case.dataset],
            "spacing": torch.from_numpy(volume.spacing).float(),  # (z, y, x)
            "meta": meta,
        }
        if volume.label is not None:
            sample["label"] = torch.from_numpy(volume.label.astype(np.int64))[None]
        return sample
