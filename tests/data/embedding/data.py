"""Build a tiny anatomical-embedding dataset: smooth-blob CT volumes and deformed MR copies.

``python -m tests.data.embedding.data OUT`` writes under ``OUT``:

- ``vol_<i>.nii.gz`` (CT-like HU, 2 mm, ``SHAPE`` (z, y, x)) with ``vol_<i>_mask.nii.gz`` (body)
  and ``vol_<i>_label.nii.gz`` (three blob "organs");
- ``vol_<i>_mr.nii.gz``: the same anatomy on another grid (rescaled voxels, shifted origin) with
  inverted, rescaled intensities, aligned in world space (a registered CT-MR pair);
- ``index.csv`` (header ``name``), ``pairs.csv`` (header ``name,ct,mr``).
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

from segfm.data.io.geometry import resample
from segfm.data.io.nifti import write_nifti

SEED = 0
NUM_CASES = 3
SHAPE = (24, 48, 48)  # z, y, x voxels at SPACING mm
SPACING = 2.0
MR_SPACING = (2.5, 1.8, 1.8)  # z, y, x


def _affine(spacing: tuple[float, float, float], origin: tuple[float, float, float]) -> np.ndarray:
    """NIfTI affine ((x, y, z) index to RAS+ mm) of an axis-aligned grid; spacing/origin z, y, x."""
    a = np.eye(4)
    a[:3, :3] = np.diag(spacing[::-1])
    a[:3, 3] = origin[::-1]
    return a


def make_volume(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Smooth random blobs in HU ``[Z, Y, X]`` and a label map of three blob organs."""
    noise = ndimage.gaussian_filter(rng.standard_normal(SHAPE), sigma=2.5)
    image = noise / noise.std() * 300.0
    label = np.zeros(SHAPE, np.int16)
    for organ in (1, 2, 3):
        centre = rng.uniform(0.25, 0.75, 3) * np.asarray(SHAPE)
        zz, yy, xx = np.indices(SHAPE)
        r = ((zz - centre[0]) / 4) ** 2 + ((yy - centre[1]) / 7) ** 2 + ((xx - centre[2]) / 7) ** 2
        label[r < 1] = organ
        image[r < 1] += 200.0 * organ
    return image.astype(np.float32), label


def build(root: Path) -> Path:
    """Write the dataset into ``root`` and return it."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    names, pairs = [], []
    for i in range(NUM_CASES):
        image, label = make_volume(rng)
        affine = _affine((SPACING,) * 3, tuple(rng.uniform(-50, 50, 3)))
        write_nifti(root / f"vol_{i}.nii.gz", image, affine)
        write_nifti(root / f"vol_{i}_mask.nii.gz", np.ones(SHAPE, np.uint8), affine)
        write_nifti(root / f"vol_{i}_label.nii.gz", label, affine)
        mr_affine = _affine(
            MR_SPACING, tuple(np.asarray(affine[:3, 3])[::-1] + rng.uniform(-6, 6, 3))
        )
        mr_shape = tuple(int(n * SPACING / s) for n, s in zip(SHAPE, MR_SPACING, strict=True))
        mr = resample(1000.0 - image, affine, mr_affine, mr_shape, order=1, outside=0.0)
        write_nifti(root / f"vol_{i}_mr.nii.gz", mr.astype(np.float32), mr_affine)
        names.append(f"vol_{i}.nii.gz")
        pairs.append((f"p{i}", f"vol_{i}.nii.gz", f"vol_{i}_mr.nii.gz"))
    with open(root / "index.csv", "w", newline="") as f:
        csv.writer(f).writerows([["name"], *[[n] for n in names]])
    with open(root / "pairs.csv", "w", newline="") as f:
        csv.writer(f).writerows([["name", "ct", "mr"], *pairs])
    return root


if __name__ == "__main__":
    build(Path(sys.argv[1]))
