"""Datasets over cached 3D volumes: random or fixed patches, and whole volumes."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from segfm.data.transforms3d import crop_box, crop_or_pad, random_flips, zscore_foreground
from segfm.data.volume_cache import Entry, VolumeCache, VolumeItem
from segfm.sample import ClassInfo, Sample


def _common(item: VolumeItem, entry: Entry, classes: dict[int, ClassInfo]) -> Sample:
    """The keys every sample has besides ``image`` and ``label``."""
    return {
        "classes": classes,
        "spacing": torch.tensor(entry.meta["spacing"], dtype=torch.float32),  # (z, y, x)
        "meta": {"case_id": item.case_id, "dataset": item.dataset, "source": str(item.image)},
    }


def _image(array: np.ndarray, zscore: bool) -> torch.Tensor:
    """float32 ``[1, *S]`` image tensor, z-scored over its voxels > 0 if asked."""
    array = zscore_foreground(array) if zscore else np.array(array, dtype=np.float32)
    return torch.from_numpy(array)[None]


def _label(array: np.ndarray) -> torch.Tensor:
    """int64 ``[1, *S]`` label tensor."""
    return torch.from_numpy(np.asarray(array, dtype=np.int64))[None]


class NiftiPatchDataset(Dataset[Sample]):
    """One cubic patch per case, centred on a class's bounding box.

    Random (training): a class present in the case is drawn, the crop is shifted by up to
    ``crop_jitter`` voxels per axis and flipped on each axis with probability 0.5 if ``flips``.
    Fixed (validation): the largest class, no shift, no flip.

    Args:
        items: The cases (each with a label).
        cache: Their preprocessed volumes.
        classes: Class id to meaning, shared by all samples.
        patch_size: Side of the patch in voxels.
        random: Draw class, shift and flips (training) or not (validation).
        flips: Random flips (only when ``random``).
        crop_jitter: Largest shift of the crop per axis (only when ``random``).
        zscore: Z-score each patch over its voxels > 0.
    """

    def __init__(
        self,
        items: list[VolumeItem],
        cache: VolumeCache,
        classes: dict[int, ClassInfo],
        patch_size: int,
        random: bool,
        flips: bool = True,
        crop_jitter: int = 0,
        zscore: bool = False,
    ) -> None:
        self.items, self.cache, self.classes = items, cache, classes
        self.patch_size, self.random, self.flips = patch_size, random, flips
        self.crop_jitter, self.zscore = crop_jitter, zscore

    def __len__(self) -> int:
        return len(self.items)

    def _centre(self, meta: dict[str, Any]) -> list[float]:
        """Bounding-box centre of the drawn (or largest) class; the volume's centre if none."""
        present = meta["classes"]
        if not present:
            return [(n - 1) / 2 for n in meta["shape"]]
        if self.random:
            ids = sorted(present, key=int)
            chosen = present[ids[int(torch.randint(len(ids), ()))]]
        else:
            chosen = max(present.values(), key=lambda c: c["count"])  # first of equals
        box = chosen["bbox"]
        return [(box[i] + box[i + 3] - 1) / 2 for i in range(3)]

    def __getitem__(self, index: int) -> Sample:
        """Sample ``image`` float32 [1, P, P, P], ``label`` int64 [1, P, P, P]."""
        item = self.items[index]
        entry = self.cache.load(item)
        jitter = [0, 0, 0]
        if self.random and self.crop_jitter:
            jitter = torch.randint(-self.crop_jitter, self.crop_jitter + 1, (3,)).tolist()
        box = crop_box(self._centre(entry.meta), (self.patch_size,) * 3, jitter)
        image = crop_or_pad(entry.image, box, entry.meta["pad_value"])
        label = crop_or_pad(entry.label, box, 0)
        if self.random and self.flips:
            image, label = random_flips([image, label])
        return {"image": _image(image, self.zscore), "label": _label(label)} | _common(
            item, entry, self.classes
        )


class NiftiVolumeDataset(Dataset[Sample]):
    """One sample per case: the whole preprocessed volume and how to map it back to the file.

    Args:
        items: The cases; those without a label file yield no ``label``.
        cache: Their preprocessed volumes.
        classes: Class id to meaning, shared by all samples.
        zscore: Z-score each volume over its voxels > 0.
    """

    def __init__(
        self,
        items: list[VolumeItem],
        cache: VolumeCache,
        classes: dict[int, ClassInfo],
        zscore: bool = False,
    ) -> None:
        self.items, self.cache, self.classes, self.zscore = items, cache, classes, zscore

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Sample:
        """Sample ``image`` float32 [1, D, H, W], ``label`` int64 [1, D, H, W] if known."""
        item = self.items[index]
        entry = self.cache.load(item)
        sample = {"image": _image(entry.image, self.zscore)} | _common(item, entry, self.classes)
        if entry.label is not None:
            sample["label"] = _label(entry.label)
        sample["meta"] |= {
            "affine": np.asarray(entry.meta["affine"], dtype=np.float64),
            "source_affine": np.asarray(entry.meta["source_affine"], dtype=np.float64),
            "source_shape": tuple(entry.meta["source_shape"]),
        }
        return sample
