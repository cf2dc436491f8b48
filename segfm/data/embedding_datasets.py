"""Two-view pairs for anatomical-embedding training (SAM, SAM++, Cross-SAM), and whole volumes.

Pair samples extend the Sample contract (see :class:`~segfm.data.EmbeddingPairDataModule`):
``view1`` / ``view2`` float32 ``[1, D, H, W]``, ``position1`` / ``position2`` float32
``[3, D, H, W]`` (each voxel's world position in mm, RAS+ coordinates listed as ``(Z, Y, X)``:
the ground truth of matching), ``valid1`` / ``valid2`` bool ``[1, D, H, W]`` (inside the source
volume), optionally ``label1`` / ``label2`` int64 ``[1, D, H, W]`` (organ labels of SAM++ inter
pairs), ``spacing`` ``[3]`` and ``meta``. Collate stacks them (every tensor value of equal
shape) with :func:`collate_pairs`.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import GaussianSmooth, RandHistogramShift
from monai.utils import convert_to_tensor
from torch.utils.data import Dataset

from segfm.data.io.embedding_volumes import (
    IndexRow,
    PreparedVolume,
    read_prepared,
)
from segfm.data.io.geometry import isotropic_grid, resample
from segfm.sample import Batch, Sample, collate
from segfm.transforms.intensity import Window

Mode = Literal["intra", "inter", "ct_mr"]
Triple = tuple[int, int, int]


def collate_pairs(samples: list[Sample]) -> Batch:
    """Stack every tensor of equal shape (pair keys included); keep the rest as lists."""
    batch = collate(samples)
    for key, values in batch.items():
        if isinstance(values, list) and all(isinstance(v, torch.Tensor) for v in values):
            if len({tuple(v.shape) for v in values}) == 1:
                batch[key] = torch.stack(values)
    return batch


def _rotation(max_deg: float, rng: np.random.Generator) -> np.ndarray:
    """A random rotation with each Euler angle in ``[-max_deg, max_deg]``."""
    out = np.eye(3)
    for axis, angle in enumerate(np.deg2rad(rng.uniform(-max_deg, max_deg, 3))):
        c, s = math.cos(angle), math.sin(angle)
        i, j = [a for a in range(3) if a != axis]
        r = np.eye(3)
        r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
        out = out @ r
    return out


def sample_view(
    volume: PreparedVolume, centre: np.ndarray, patch: Triple, spacing: float, rotation: np.ndarray
) -> dict[str, torch.Tensor]:
    """Resample a patch of ``volume`` centred at world point ``centre`` (RAS+ X, Y, Z).

    The patch axes follow the volume's array axes (rotated by ``rotation``), ``spacing`` mm apart.

    Returns:
        ``image`` [1, *patch] (trilinear, outside = the volume's minimum), ``position`` [3, *patch]
        (world ``(Z, Y, X)`` mm), ``valid`` [1, *patch] and, if the volume has one, ``label``.
    """
    a = volume.affine
    directions = a[:3, :3] / volume.spacing  # unit world step of each array axis (z, y, x)
    steps = [(np.arange(n) - (n - 1) / 2) * spacing for n in patch]
    grid = np.stack(np.meshgrid(*steps, indexing="ij"), -1)  # [*patch, 3] (z, y, x) mm
    world = grid @ (directions @ rotation).T + centre  # [*patch, 3] (X, Y, Z)
    index = np.linalg.solve(a[:3, :3], (world - a[:3, 3]).reshape(-1, 3).T).T.reshape(world.shape)
    shape = np.asarray(volume.image.shape, np.float64)
    norm = torch.from_numpy(2 * index / np.maximum(shape - 1, 1) - 1).float()[..., [2, 1, 0]][None]
    low = float(volume.image.min())
    image = torch.from_numpy(volume.image - low)[None, None]
    out = {
        "image": F.grid_sample(image, norm, mode="bilinear", align_corners=True)[0] + low,
        "position": torch.from_numpy(world[..., ::-1].copy()).float().permute(3, 0, 1, 2),
        "valid": torch.from_numpy(np.all((index >= 0) & (index <= shape - 1), -1))[None],
    }
    if volume.label is not None:
        label = torch.from_numpy(volume.label).float()[None, None]
        out["label"] = F.grid_sample(label, norm, mode="nearest", align_corners=True)[0].long()
    return out


def _body_points(volume: PreparedVolume) -> np.ndarray:
    """Array indices ``[N, 3]`` of the body (mask, or every voxel)."""
    if volume.mask is not None and volume.mask.any():
        return np.argwhere(volume.mask)
    return np.argwhere(np.ones(volume.image.shape, bool))


def _world(volume: PreparedVolume, index: np.ndarray) -> np.ndarray:
    return volume.affine[:3, :3] @ index + volume.affine[:3, 3]


class ViewPairDataset(Dataset[Sample]):
    """Random (or, with ``fixed_seed``, reproducible) two-view pairs.

    Args:
        rows: Index rows (``ct_mr``: CT, MR alternating).
        mode: ``intra`` (two views of one volume), ``inter`` (two volumes, labelled; SAM++) or
            ``ct_mr`` (view 1 from a CT, view 2 from the aligned MR of the same patient).
        length: Samples per epoch.
        options: Augmentation settings (see :class:`EmbeddingPairDataModule`).
        fixed_seed: Seed of validation pairs (``seed + index``); None draws from torch's generator.
    """

    def __init__(
        self,
        rows: list[IndexRow],
        mode: Mode,
        length: int,
        options: dict[str, Any],
        fixed_seed: int | None = None,
    ) -> None:
        self.rows, self.mode, self.length, self.o, self.fixed_seed = (
            rows,
            mode,
            length,
            options,
            fixed_seed,
        )
        self.cases = len(rows) // 2 if mode == "ct_mr" else len(rows)

    def __len__(self) -> int:
        return self.length

    def _augment(self, image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        o = self.o
        if o["cross_modal_aug"]:  # Cross-SAM: [0, 1], histogram shift, inversion, blur
            low, high = image.min(), image.max()
            x = (image - low) / (high - low).clamp(min=1e-6)
            if rng.random() < 0.9:
                shift = RandHistogramShift(prob=1.0)
                shift.set_random_state(int(rng.integers(2**31)))
                x = convert_to_tensor(shift(x), track_meta=False)
                if rng.random() < 0.3:
                    x = 1 - x
            if rng.random() < 0.5:
                blur = GaussianSmooth(sigma=float(rng.uniform(0.1, 1)))
                x = convert_to_tensor(blur(x), track_meta=False)
            image = x * 255 - 50
        if o["noise_std"] > 0:
            noise = torch.from_numpy(rng.standard_normal(image.shape).astype(np.float32))
            image = image + noise * float(rng.uniform(0, o["noise_std"]))
        return image.float()

    def __getitem__(self, index: int) -> Sample:
        """A pair of views (see the module docstring for the keys)."""
        seed = (
            self.fixed_seed + index
            if self.fixed_seed is not None
            else int(torch.randint(2**31, ()))
        )
        rng = np.random.default_rng(seed)
        case = index % self.cases if self.fixed_seed is not None else int(rng.integers(self.cases))
        o = self.o
        if self.mode == "ct_mr":
            vols = [
                read_prepared(self.rows[2 * case], o["intensity"]),
                read_prepared(self.rows[2 * case + 1], o["intensity"]),
            ]
        elif self.mode == "inter":
            other = (case + 1 + int(rng.integers(max(self.cases - 1, 1)))) % self.cases
            vols = [
                read_prepared(self.rows[case], o["intensity"]),
                read_prepared(self.rows[other], o["intensity"]),
            ]
        else:
            vols = [read_prepared(self.rows[case], o["intensity"])] * 2
        patch = o["semantic_patch_size"] if self.mode == "inter" else o["patch_size"]
        independent = self.mode == "inter" or (
            self.fixed_seed is None and rng.random() < o["independent_prob"]
        )
        seed_point = _world(
            vols[0], _body_points(vols[0])[rng.integers(len(_body_points(vols[0])))].astype(float)
        )
        sample: Sample = {}
        for v, vol in enumerate(vols, start=1):
            scale = (
                1.0
                if self.fixed_seed is not None and o["fixed_val_scale"]
                else rng.uniform(*o["scale_range"])
            )
            spacing = o["spacing_mm"] * scale
            if independent:
                pts = _body_points(vol)
                centre = _world(vol, pts[rng.integers(len(pts))].astype(float))
            else:  # the shared seed point lies inside both views
                half = np.asarray(patch, float) * spacing / 2
                offset = rng.uniform(-half, half) * o["seed_margin"]
                centre = seed_point + (vol.affine[:3, :3] / vol.spacing) @ offset
            rot = _rotation(o["rotation_deg"], rng) if o["rotation_deg"] > 0 else np.eye(3)
            view = sample_view(vol, centre, patch, spacing, rot)
            sample[f"view{v}"] = self._augment(view["image"], rng)
            sample[f"position{v}"] = view["position"]
            sample[f"valid{v}"] = view["valid"]
            if "label" in view and self.mode == "inter":
                sample[f"label{v}"] = view["label"]
        sample["spacing"] = torch.full((3,), float(o["spacing_mm"]))
        sample["meta"] = {"case_id": vols[0].name, "case_id2": vols[1].name, "kind": self.mode}
        return sample


class PreparedVolumeDataset(Dataset[Sample]):
    """Whole volumes resampled to ``spacing_mm`` (predict): ``image`` [1, D, H, W] and the grid."""

    def __init__(self, rows: list[IndexRow], spacing_mm: float, intensity: Window) -> None:
        self.rows, self.spacing_mm, self.intensity = rows, spacing_mm, intensity

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> Sample:
        """``image``, ``spacing`` and ``meta`` {case_id, source, affine (zyx index to RAS+)}."""
        vol = read_prepared(self.rows[index], self.intensity)
        image, affine = vol.image, vol.affine
        if not np.allclose(vol.spacing, self.spacing_mm, rtol=0.01):
            nifti = affine[:, [2, 1, 0, 3]]
            target, shape = isotropic_grid(nifti, image.shape, self.spacing_mm)
            image = resample(image, nifti, target, shape, order=1, outside=None)
            affine = target[:, [2, 1, 0, 3]]
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image, np.float32))[None],
            "spacing": torch.full((3,), float(self.spacing_mm)),
            "meta": {"case_id": vol.name, "source": str(vol.path), "affine": affine},
        }
