"""Datasets over MedSAM's npy layout: 2D slice samples and whole-volume samples."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from segfm.data.io.npy_slices import SliceFiles, dataset_of, read_slice, read_volume
from segfm.sample import ClassInfo, Sample


class NpySliceDataset(Dataset[Sample]):
    """One 2D sample per slice file.

    Args:
        slices: The slices.
        geometry: Per case id, the voxel spacing ``(z, y, x)`` in mm and shape ``(Z, Y, X)`` of
            its source volume; cases without it get a pixel spacing of 1.
        classes: Class id to meaning, shared by all samples.
        image_size: Side to resize slices to (bilinear image, nearest label); ``None`` keeps
            the stored size.
    """

    def __init__(
        self,
        slices: list[SliceFiles],
        geometry: dict[str, tuple[Sequence[float], tuple[int, ...]]],
        classes: dict[int, ClassInfo],
        image_size: int | None = None,
    ) -> None:
        self.slices = slices
        self.geometry = geometry
        self.classes = classes
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.slices)

    def __getitem__(self, index: int) -> Sample:
        """Sample ``image`` [3, H, W], ``label`` [1, H, W], ``spacing`` [2] (pixel size in mm)."""
        files = self.slices[index]
        image_np, label_np = read_slice(files)
        image, label = torch.from_numpy(image_np), torch.from_numpy(label_np)  # [3,H,W], [1,H,W]
        size = self.image_size
        if size is not None and tuple(image.shape[1:]) != (size, size):
            image = F.interpolate(
                image[None], (size, size), mode="bilinear", align_corners=False, antialias=True
            )[0]
            label = F.interpolate(label[None].float(), (size, size), mode="nearest-exact")[0]
            label = label.long()
        spacing = torch.ones(2)
        if files.case_id in self.geometry:
            mm, shape = self.geometry[files.case_id]
            # the slice covers the source field of view, whatever its pixel count
            spacing = torch.tensor([mm[1] * shape[1], mm[2] * shape[2]]) / torch.tensor(
                image.shape[1:]
            )
        return {
            "image": image,
            "label": label,
            "spacing": spacing.float(),
            "classes": self.classes,
            "meta": {
                "case_id": files.case_id,
                "dataset": dataset_of(files.case_id),
                "slice_index": files.index,
                "path": str(files.image),
            },
        }


class NpyVolumeDataset(Dataset[Sample]):
    """One 3D sample per case volume (``npz/<case>.npz``).

    Args:
        paths: The npz files; the file stem is the case id.
        classes: Class id to meaning, shared by all samples.
    """

    def __init__(self, paths: list[Path], classes: dict[int, ClassInfo]) -> None:
        self.paths = paths
        self.classes = classes

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Sample:
        """Sample ``image`` [1, D, H, W] in [0, 1], ``label`` [1, D, H, W], ``spacing`` [3]."""
        path = self.paths[index]
        volume = read_volume(path)
        return {
            "image": torch.from_numpy(volume.image),
            "label": torch.from_numpy(volume.label),
            "spacing": torch.from_numpy(volume.spacing).float(),  # (z, y, x)
            "classes": self.classes,
            "meta": {
                "case_id": path.stem,
                "dataset": dataset_of(path.stem),
                "affine": volume.affine,
                "source": volume.source,
                "shape": tuple(volume.image.shape[1:]),
            },
        }
