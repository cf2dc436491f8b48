"""Generate volumes for anatomical-embedding training: CT-like scans with repeated texture.

``python -m data_tools.synthetic_embedding --output DIR --num_cases 8 --shape 32 64 64`` writes:

- ``vol_<i>.nii.gz``: CT-like HU at ``SPACING`` mm, shape ``(z, y, x)``, with
  ``vol_<i>_mask.nii.gz`` (body: every voxel) and ``vol_<i>_label.nii.gz`` (three ellipsoid
  "organs", labels 1-3);
- ``vol_<i>_mr.nii.gz``: the same anatomy on another grid (other voxel size, shifted origin) with
  inverted, rescaled intensities, aligned in world space (a registered CT-MR pair);
- ``index.csv`` (header ``name``) and ``pairs.csv`` (header ``name,ct,mr``).

Each scan adds a smooth large-scale field (the "anatomy") and the organs to a small random
texture tile repeated over the whole volume. The texture makes local appearance ambiguous: a
voxel looks like every voxel one period away, so matching by local appearance (what a random
network does) fails and only context (the anatomy, the organs) tells repeats apart, which the
network has to learn. Case ``i`` depends only on ``(seed, i)``; existing cases are skipped.
"""

from __future__ import annotations

import argparse
import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage

from data_tools.parallel import run_jobs
from segfm.data.io.atomic import atomic_path
from segfm.data.io.geometry import resample
from segfm.data.io.nifti import write_nifti

Triple = tuple[int, int, int]
SPACING = 2.0
MR_SPACING = (2.5, 1.8, 1.8)  # z, y, x


def nifti_affine(spacing: Sequence[float], origin: Sequence[float]) -> np.ndarray:
    """NIfTI affine ((x, y, z) index to RAS+ mm) of an axis-aligned grid; spacing/origin z, y, x."""
    a = np.eye(4)
    a[:3, :3] = np.diag(list(spacing)[::-1])
    a[:3, 3] = list(origin)[::-1]
    return a


def make_volume(
    rng: np.random.Generator,
    shape: Triple,
    texture_period: int = 6,
    texture_hu: float = 300.0,
    anatomy_hu: float = 250.0,
    anatomy_sigma: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """A textured CT-like volume in HU ``[Z, Y, X]`` and its label map of three organs.

    Args:
        rng: Random generator.
        shape: Volume size ``(z, y, x)`` in voxels.
        texture_period: Side of the repeated texture tile in voxels (0: no texture).
        texture_hu: Standard deviation of the texture.
        anatomy_hu: Standard deviation of the smooth field.
        anatomy_sigma: Smoothness of that field in voxels (default: a fifth of the shortest side).
    """
    sigma = min(shape) / 5 if anatomy_sigma is None else anatomy_sigma
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=sigma)
    image = field / field.std() * anatomy_hu
    if texture_period > 0:
        tile = ndimage.gaussian_filter(rng.standard_normal((texture_period,) * 3), 1.0, mode="wrap")
        reps = [-(-n // texture_period) for n in shape]
        texture = np.tile(tile / tile.std(), reps)[: shape[0], : shape[1], : shape[2]]
        image = image + texture * texture_hu
    label = np.zeros(shape, np.int16)
    grid = np.indices(shape)
    for organ in (1, 2, 3):
        centre = rng.uniform(0.25, 0.75, 3) * np.asarray(shape)
        radii = np.asarray(shape) * rng.uniform(0.12, 0.2, 3)
        inside = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii, strict=True)) < 1
        label[inside] = organ
        image[inside] += 200.0 * organ
    return image.astype(np.float32), label


def write_case(
    root: Path, index: int, seed: int, shape: Triple, texture_period: int, sigma: float | None
) -> str:
    """Write case ``index`` (scan, mask, labels, MR copy) unless present; return its file name."""
    name = f"vol_{index}.nii.gz"
    if (root / f"vol_{index}_mr.nii.gz").exists():  # written last
        return name
    rng = np.random.default_rng([seed, index])
    image, label = make_volume(rng, shape, texture_period, anatomy_sigma=sigma)
    affine = nifti_affine((SPACING,) * 3, rng.uniform(-50, 50, 3))
    write_nifti(root / name, image, affine)
    write_nifti(root / f"vol_{index}_mask.nii.gz", np.ones(shape, np.uint8), affine)
    write_nifti(root / f"vol_{index}_label.nii.gz", label, affine)
    mr_affine = nifti_affine(MR_SPACING, affine[:3, 3][::-1] + rng.uniform(-6, 6, 3))
    mr_shape = tuple(int(n * SPACING / s) for n, s in zip(shape, MR_SPACING, strict=True))
    mr = resample(1000.0 - image, affine, mr_affine, mr_shape, order=1, outside=0.0)
    write_nifti(root / f"vol_{index}_mr.nii.gz", mr.astype(np.float32), mr_affine)
    return name


def _write_case(args: tuple[Path, int, int, Triple, int, float | None]) -> str:
    return write_case(*args)


def build(
    root: str | Path,
    num_cases: int = 3,
    shape: Triple = (24, 48, 48),
    texture_period: int = 6,
    seed: int = 0,
    workers: int | None = None,
    anatomy_sigma: float | None = None,
) -> Path:
    """Write the dataset into ``root`` (see the module docstring) and return it.

    Args:
        root: Output folder.
        num_cases: Number of scans.
        shape: Scan size ``(z, y, x)`` in voxels (2 mm).
        texture_period: Side of the repeated texture tile in voxels (0: none).
        seed: Base seed.
        workers: Processes (default: every core; 0 or 1 runs in this process).
        anatomy_sigma: Smoothness of the large-scale field in voxels (default: shortest side / 5).
    """
    if num_cases < 1 or min(shape) < 8 or texture_period < 0:
        msg = (
            f"need num_cases >= 1, shape >= 8, texture_period >= 0; got {num_cases}, {shape}, "
            f"{texture_period}"
        )
        raise ValueError(msg)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    jobs = [(root, i, seed, tuple(shape), texture_period, anatomy_sigma) for i in range(num_cases)]
    names = list(run_jobs(_write_case, jobs, workers, desc="synthetic embedding", ordered=True))
    for file, rows in (
        ("index.csv", [["name"], *[[n] for n in names]]),
        ("pairs.csv", [["name", "ct", "mr"], *[[f"p{i}", n, n.replace(".nii", "_mr.nii")]
                                               for i, n in enumerate(names)]]),
    ):  # fmt: skip
        with atomic_path(root / file) as tmp, open(tmp, "w", newline="") as f:
            csv.writer(f).writerows(rows)
    return root


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument("--num_cases", type=int, default=8)
    parser.add_argument("--shape", type=int, nargs=3, default=(32, 64, 64), metavar=("Z", "Y", "X"))
    parser.add_argument("--texture_period", type=int, default=6, help="voxels; 0: no texture")
    parser.add_argument("--anatomy_sigma", type=float, default=None, help="voxels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    a = parser.parse_args(argv)
    build(
        a.output, a.num_cases, tuple(a.shape), a.texture_period, a.seed, a.workers, a.anatomy_sigma
    )


if __name__ == "__main__":
    main()
