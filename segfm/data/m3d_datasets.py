"""M3D-Seg cases as samples: SegVol's loading, min-max scaling and training transform."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from monai.data import get_track_meta, set_track_meta
from monai.transforms import (
    Compose,
    CropForegroundd,
    OneOf,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandScaleIntensityd,
    RandShiftIntensityd,
    Resized,
    SpatialPadd,
    Transform,
)
from torch.utils.data import Dataset

from segfm.data.io.m3d_seg import (
    M3DCase,
    cleanse_pseudo_mask,
    read_image,
    read_label,
    read_pseudo_mask,
    resize_nearest,
)
from segfm.errors import DataError
from segfm.sample import ClassInfo, Sample


def min_max(image: np.ndarray) -> np.ndarray:
    """SegVol's ``MinMaxNormalization``: shift to 0 and divide by the maximum (at least 1e-8)."""
    image = image - image.min()
    image /= max(float(image.max()), 1e-8)
    return image.astype(np.float32, copy=False)


class ResizeScale(Transform):
    """Multiply ``data["scale"]`` by the zoom per axis of a resize of ``data["image"]`` to ``size``.

    Placed before each resize, it gives the voxel size of the output without MONAI's metadata
    (an affine per tensor, updated by every transform), which costs a third of the augmentation
    time of a small crop.

    Args:
        size: The spatial size the next resize gives.
    """

    def __init__(self, size: Sequence[int]) -> None:
        self.size = torch.tensor(size, dtype=torch.float64)

    def __call__(self, data: Mapping[str, Any]) -> dict[str, Any]:
        """A copy of ``data`` with its ``scale`` (ones if absent) times the zoom."""
        out = dict(data)
        shape = torch.tensor(out["image"].shape[1:], dtype=torch.float64)
        out["scale"] = out.get("scale", torch.ones(len(self.size), dtype=torch.float64))
        out["scale"] = out["scale"] * shape / self.size
        return out


@contextmanager
def untracked_meta() -> Iterator[None]:
    """Run MONAI transforms on plain tensors (no metadata), then restore the global setting."""
    tracked = get_track_meta()
    set_track_meta(False)
    try:
        yield
    finally:
        set_track_meta(tracked)


def _resize_or_crop(
    keys: list[str], size: tuple[int, ...], modes: list[str], crop_prob: float
) -> Transform:
    """A resize of the whole volume, or a random crop with probability ``crop_prob``."""
    resize = Compose([ResizeScale(size), Resized(keys, size, mode=modes)])
    crop = RandCropByPosNegLabeld(
        keys, "label", size, pos=2, neg=1, image_key="image", image_threshold=0
    )
    if crop_prob == 0:
        return resize
    if crop_prob == 1:
        return crop
    return OneOf([resize, crop], weights=[1 - crop_prob, crop_prob])


def training_transform(
    spatial_size: Sequence[int],
    pseudo: bool,
    flip_prob: float,
    intensity_prob: float,
    crop_prob: float = 0.5,
    resize_mode: str = "area",
) -> Compose:
    """SegVol's training augmentation after ``MinMaxNormalization``, on ``[1, D, H, W]`` arrays.

    Foreground crop (image > 0), padding to ``spatial_size`` (0; -1 for ``pseudo_label``), then
    either a resize to ``spatial_size`` or, with probability ``crop_prob`` (SegVol: even odds),
    a random crop centred on the label's foreground with probability 2/3, flips per axis,
    intensity scale and shift, and a final resize. Images are resized with ``resize_mode``
    (SegVol: ``area``; ``nearest-exact`` is what the zoom-out of
    :func:`~segfm.inference.zoom.zoom_out_zoom_in` does to a test volume). Labels are resized by
    nearest neighbour; SegVol resizes them with ``area`` interpolation, which blends class ids
    into values of no class. The output's ``scale`` (absent when nothing was resized) is the zoom
    of the voxel size per axis.
    """
    if not 0 <= crop_prob <= 1:
        msg = f"crop_prob must be in [0, 1], got {crop_prob}"
        raise ValueError(msg)
    keys = ["image", "label", "pseudo_label"] if pseudo else ["image", "label"]
    modes = [resize_mode] + ["nearest-exact"] * (len(keys) - 1)
    size = tuple(spatial_size)
    pads = [SpatialPadd(["image", "label"], size)]
    if pseudo:
        pads.append(SpatialPadd(["pseudo_label"], size, value=-1))
    return Compose(
        [
            CropForegroundd(keys, source_key="image"),
            *pads,
            _resize_or_crop(keys, size, modes, crop_prob),
            *[RandFlipd(keys, prob=flip_prob, spatial_axis=axis) for axis in range(3)],
            RandScaleIntensityd("image", factors=0.1, prob=intensity_prob),
            RandShiftIntensityd("image", offsets=0.1, prob=intensity_prob),
            ResizeScale(size),
            Resized(keys, size, mode=modes),
        ]
    )


def _spacing(case: M3DCase) -> np.ndarray:
    """Voxel size ``(z, y, x)`` in mm from the case's affine; 1 mm without one."""
    if case.affine is None:
        return np.ones(3)
    return np.linalg.norm(case.affine[:3, :3], axis=0)[::-1].copy()


class M3DSegDataset(Dataset[Sample]):
    """The cases of one or more M3D-Seg datasets as samples (see :class:`M3DSegDataModule`).

    Args:
        cases: The cases, grouped by dataset code (the sampler batches within a group).
        classes: Dataset code to its classes.
        transform: Training augmentation (:func:`training_transform`); ``None`` gives whole
            volumes.
        pseudo: Add ``pseudo_label`` (training only).
    """

    def __init__(
        self,
        cases: list[M3DCase],
        classes: dict[str, dict[int, ClassInfo]],
        transform: Compose | None = None,
        pseudo: bool = False,
    ) -> None:
        self.cases, self.classes, self.transform, self.pseudo = cases, classes, transform, pseudo
        codes = list(dict.fromkeys(case.code for case in cases))
        self.groups = [[i for i, c in enumerate(cases) if c.code == code] for code in codes]

    def __len__(self) -> int:
        return len(self.cases)

    def _meta(self, case: M3DCase, shape: tuple[int, ...]) -> dict[str, Any]:
        return {
            "case_id": case.case_id,
            "dataset": case.code,
            "source": str(case.image),
            "label_source": str(case.mask),
            "original_shape": shape[::-1],  # (X, Y, Z) of image.npy
            "transpose": (2, 1, 0),  # sample axes (D, H, W) = stored axes (Z, Y, X)
            "affine": case.affine,
            "instance": False,
        }

    def _pseudo(self, case: M3DCase, shape: tuple[int, ...]) -> np.ndarray:
        if not case.pseudo_mask.is_file():
            return np.full(shape, -1, dtype=np.int64)
        return resize_nearest(read_pseudo_mask(case.pseudo_mask), shape)

    def __getitem__(self, index: int) -> Sample:
        """One sample; see :class:`M3DSegDataModule` for its keys."""
        case = self.cases[index]
        image, label = read_image(case.image), read_label(case.mask)
        if image.shape != label.shape:
            msg = (
                f"{case.image} is {image.shape} (Z, Y, X) but {case.mask} {label.shape}; "
                "rebuild the case with python -m data_tools.build_dataset"
            )
            raise DataError(msg)
        spacing = _spacing(case)
        sample: Sample = {"classes": self.classes[case.code], "meta": self._meta(case, image.shape)}
        if self.transform is None:
            sample["image"] = torch.from_numpy(min_max(image))[None]
            sample["label"] = torch.from_numpy(label)[None]
            sample["spacing"] = torch.from_numpy(spacing).float()
            return sample
        data: dict[str, Any] = {
            "image": torch.from_numpy(min_max(image))[None],
            "label": torch.from_numpy(label)[None],
        }
        if self.pseudo:
            data["pseudo_label"] = torch.from_numpy(self._pseudo(case, image.shape))[None]
        # MONAI draws from per-transform generators: reseed them from torch's, which the loader
        # seeds per sample and epoch (SeededDataset), so workers differ and epochs replay
        self.transform.set_random_state(int(torch.randint(2**31, ())))
        with untracked_meta():
            out = self.transform(data)
        out = out[0] if isinstance(out, list) else out
        sample["image"] = torch.as_tensor(out["image"]).float()
        sample["label"] = torch.as_tensor(out["label"]).round().long()
        sample["spacing"] = (torch.from_numpy(spacing) * out.get("scale", 1.0)).float()
        if self.pseudo:
            pseudo = torch.as_tensor(out["pseudo_label"]).round().long()
            sample["pseudo_label"] = torch.from_numpy(cleanse_pseudo_mask(pseudo[0].numpy()))[None]
        return sample
