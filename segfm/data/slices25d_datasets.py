"""2.5D slices (a slice and its two neighbours as channels), encoded from npz or read from PNGs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from segfm.data.io.npz_cvpr import DatasetEntry, NpzCase, check_label_ids, class_infos, read_case
from segfm.data.io.png_slices import mask_of, png_name, read_png
from segfm.data.slice_augment import SliceAugment
from segfm.data.volume_lru import VolumeLRU
from segfm.errors import DataError
from segfm.sample import Sample
from segfm.transforms.encoding25d import Geometry, encode_slice, resample_label


@dataclass(frozen=True)
class SliceItem:
    """One 2.5D slice.

    Attributes:
        case: Its volume.
        axis: The slicing axis.
        index: The slice along ``axis``.
        geometry: The volume's encoding (``None`` for a PNG whose npz is missing).
        spacing: ``(rows, columns)`` mm of the encoded pixels (1 mm when unknown).
        png: The tool's image PNG, or ``None`` to encode from the npz.
    """

    case: NpzCase
    axis: int
    index: int
    geometry: Geometry | None
    spacing: tuple[float, float]
    png: Path | None = None

    @property
    def name(self) -> str:
        """The tool's file name, ``<stem>_<iii>.png`` or ``<stem>_view<k>_<iii>.png``."""
        return png_name(self.case.path.stem, self.axis, self.index)


def pixel_spacing(geometry: Geometry, spacing: np.ndarray) -> tuple[float, float]:
    """Millimetres of an encoded pixel: the slice plane's spacing, scaled by padded / size."""
    plane = [float(s) for i, s in enumerate(spacing) if i != geometry.axis]
    rows, cols = geometry.padded
    return plane[0] * rows / geometry.size, plane[1] * cols / geometry.size


class Slice25dDataset(Dataset[Sample]):
    """2.5D slices, encoded from the npz on the fly or read from the tool's PNGs.

    Args:
        items: The slices.
        entries: Dataset name to its ``class_prompts.json`` entry.
        prompts_file: ``class_prompts.json`` (named in errors).
        size: Side of the slices.
        augment: Training augmentation, or ``None``.
        cache_bytes: Budget of the decoded volumes kept by each loading process
            (:class:`~segfm.data.volume_lru.VolumeLRU`); 0 decodes the npz for every slice.
    """

    def __init__(
        self,
        items: list[SliceItem],
        entries: dict[str, DatasetEntry],
        prompts_file: Path,
        size: int,
        augment: SliceAugment | None,
        cache_bytes: int = 0,
    ) -> None:
        self.items, self.entries, self.prompts_file = items, entries, prompts_file
        self.size, self.augment = size, augment
        self.classes = {name: class_infos(entry) for name, entry in entries.items()}
        self.cache = VolumeLRU(cache_bytes)

    def groups(self) -> list[list[int]]:
        """Indices of the items of each volume, in order of first appearance."""
        by_case: dict[str, list[int]] = {}
        for index, item in enumerate(self.items):
            by_case.setdefault(item.case.case_id, []).append(index)
        return list(by_case.values())

    def _read(self, case: NpzCase) -> tuple[np.ndarray, np.ndarray]:
        """Image and label volumes of a training npz."""
        volume = read_case(case)
        if volume.image is None or volume.label is None:
            msg = f"{case.path} has no 'gts' array; training volumes need their labels"
            raise DataError(msg)
        return volume.image, volume.label

    def __len__(self) -> int:
        return len(self.items)

    def _encode(self, item: SliceItem) -> tuple[torch.Tensor, torch.Tensor]:
        """Image ``[3, S, S]`` and label ``[S, S]`` from the npz."""
        volume, labels = self.cache.get(item.case.path, lambda: self._read(item.case))
        assert item.geometry is not None  # set for every npz item
        image = encode_slice(volume, item.geometry, item.index)
        label = resample_label(labels, item.geometry, [item.index])[0]
        entry = self.entries[item.case.dataset]
        ids = label.unique().tolist()  # the slice's ids: checking the volume's costs a sort
        check_label_ids(ids, item.case.path, item.case.dataset, entry, self.prompts_file)
        return image, label

    def __getitem__(self, index: int) -> Sample:
        """Sample: ``image`` float32 [3, S, S] 0-255, ``label`` int64 [1, S, S], ``spacing`` [2]."""
        item = self.items[index]
        if item.png is None:
            image, label = self._encode(item)
        else:
            image = torch.from_numpy(read_png(item.png, True, self.size).astype(np.float32))
            label = torch.from_numpy(read_png(mask_of(item.png), False, self.size).astype(np.int64))
        label = label[None]
        if self.augment is not None:
            image, label = self.augment(image, label)
        entry = self.entries[item.case.dataset]
        return {
            "image": image,
            "label": label,
            "classes": self.classes[item.case.dataset],
            "spacing": torch.tensor(item.spacing, dtype=torch.float32),
            "meta": {
                "case_id": item.case.case_id,
                "dataset": item.case.dataset,
                "source": str(item.png or item.case.path),
                "instance": entry.instance,
                "slice_index": item.index,
                "axis": item.axis,
                "file_name": item.name,
            },
        }
