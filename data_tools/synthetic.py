"""Generate a small synthetic abdominal CT dataset in nnU-Net v2 raw layout.

``python -m data_tools.synthetic --output DIR --num_cases 20 --seed 0`` writes::

    DIR/dataset.json                  channel_names {"0": "CT"}, labels, numTraining, file_ending
    DIR/imagesTr/synth_000_0000.nii.gz  int16 Hounsfield units
    DIR/labelsTr/synth_000.nii.gz       uint8 class ids

Each case is a body (soft tissue inside a fat rim, air outside at -1000 HU) holding a large
irregular liver (~60 HU), a crescent spleen of similar intensity (~45 HU), two kidneys (~150 HU),
a tubular aorta running along z (~200 HU) and an unlabelled spine whose bone is brighter than all
of them, at random positions, sizes and in-plane rotations. Edges are blurred (partial volume),
then Gaussian noise and a smooth multiplicative and additive bias field are added. Cases differ
in size (default 96-128 px in-plane, 24-48 slices) and anisotropic spacing (0.7-1.0 mm in-plane,
2.5-5 mm between slices), stored in the NIfTI affine and zooms. The affine is the usual one of a
CT converted from DICOM (``diag(-sx, -sy, sz)``): column index grows towards the patient's left,
row index towards the back, so the liver and right kidney appear on the image's left. At the
default sizes every labelled structure keeps more than 1000 voxels, so MedSAM's small-object
removal leaves all of them in place. Case ``i`` depends only on ``(seed, i)``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from scipy import ndimage

from segfm.data.io.atomic import save_json
from segfm.data.io.nifti import write_nifti

LABELS = {"background": 0, "liver": 1, "spleen": 2, "kidney_left": 3, "kidney_right": 4, "aorta": 5}

Grid = tuple[np.ndarray, np.ndarray, np.ndarray]  # z [D,1,1], y [1,H,1], x [1,1,W] in [-1, 1]


def _ellipsoid(
    grid: Grid, centre: tuple[float, ...], radii: tuple[float, ...], angle: float
) -> np.ndarray:
    """Squared normalised radius [D,H,W] of an ellipsoid turned in-plane by ``angle``: < 1 in."""
    z, y, x = (g - c for g, c in zip(grid, centre, strict=True))
    u = np.cos(angle) * x + np.sin(angle) * y
    v = -np.sin(angle) * x + np.cos(angle) * y
    return (u / radii[2]) ** 2 + (v / radii[1]) ** 2 + (z / radii[0]) ** 2


def _wobble(rng: np.random.Generator, grid: Grid, amplitude: float, terms: int = 3) -> np.ndarray:
    """A smooth random field (a few random sinusoids) that makes shapes irregular. [D,H,W]."""
    field = np.zeros(np.broadcast_shapes(*(g.shape for g in grid)), dtype=np.float32)
    for _ in range(terms):
        k = rng.normal(size=3) * rng.uniform(1.5, 4.0)
        field += np.sin(
            k[0] * grid[0] + k[1] * grid[1] + k[2] * grid[2] + rng.uniform(0, 2 * np.pi)
        )
    return amplitude * field / terms


def _organs(rng: np.random.Generator, grid: Grid) -> dict[str, np.ndarray]:
    """Boolean masks of the labelled organs, keyed by label name. Each [D,H,W]."""

    def j(spread: float) -> float:  # jitter
        return float(rng.uniform(-spread, spread))

    liver_right = _ellipsoid(
        grid,
        (0.2 + j(0.1), -0.05 + j(0.05), -0.38 + j(0.05)),
        (rng.uniform(0.6, 0.85), rng.uniform(0.28, 0.36), rng.uniform(0.3, 0.38)),
        j(0.4),
    )
    liver_left = _ellipsoid(
        grid,
        (0.3 + j(0.1), -0.28 + j(0.04), -0.05 + j(0.05)),
        (rng.uniform(0.3, 0.45), rng.uniform(0.12, 0.16), rng.uniform(0.2, 0.26)),
        j(0.3),
    )
    liver = np.minimum(liver_right, liver_left) < 1 + _wobble(rng, grid, 0.4, terms=4)
    spleen_centre = (0.35 + j(0.1), 0.2 + j(0.04), 0.55 + j(0.04))
    spleen_radii = (rng.uniform(0.4, 0.55), rng.uniform(0.22, 0.28), rng.uniform(0.14, 0.17))
    spleen_angle = -0.5 + j(0.3)
    hollow = (spleen_centre[0], spleen_centre[1], spleen_centre[2] - 0.12)
    spleen = (
        _ellipsoid(grid, spleen_centre, spleen_radii, spleen_angle) < 1 + _wobble(rng, grid, 0.1)
    ) & (_ellipsoid(grid, hollow, tuple(0.8 * r for r in spleen_radii), spleen_angle) > 1)
    organs = {"liver": liver, "spleen": spleen}
    for name, side in (("kidney_left", 1.0), ("kidney_right", -1.0)):
        centre = (-0.15 + j(0.1) - 0.1 * (side < 0), 0.33 + j(0.03), side * (0.4 + j(0.03)))
        radii = (rng.uniform(0.4, 0.5), rng.uniform(0.19, 0.24), rng.uniform(0.13, 0.17))
        notch = (centre[0], centre[1], centre[2] - side * radii[2])
        organs[name] = (_ellipsoid(grid, centre, radii, side * rng.uniform(0.3, 0.6)) < 1) & (
            _ellipsoid(grid, notch, (0.25, 0.07, 0.07), 0.0) > 1
        )
    z, y, x = grid
    radius, wave = rng.uniform(0.125, 0.15), rng.uniform(0.5, 2.0)
    cy = 0.1 + j(0.02) + 0.03 * np.sin(wave * z + j(np.pi))
    cx = 0.08 + j(0.02) + 0.04 * np.sin(wave * z + j(np.pi))
    organs["aorta"] = (y - cy) ** 2 + (x - cx) ** 2 < radius**2
    return organs


def make_case(
    rng: np.random.Generator, shape: tuple[int, int, int], spacing_z: float
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one synthetic case.

    Args:
        rng: Random generator of this case.
        shape: Array shape ``(D, H, W)``.
        spacing_z: Slice spacing in mm (places the intervertebral discs every ~3 cm).

    Returns:
        The image int16 ``[D, H, W]`` in HU and the label uint8 ``[D, H, W]``.
    """
    d, h, w = shape
    grid: Grid = (
        np.linspace(-1, 1, d, dtype=np.float32)[:, None, None],
        np.linspace(-1, 1, h, dtype=np.float32)[None, :, None],
        np.linspace(-1, 1, w, dtype=np.float32)[None, None, :],
    )
    z, y, x = grid
    ax, ay, rim = rng.uniform(0.82, 0.94), rng.uniform(0.64, 0.76), rng.uniform(0.06, 0.1)
    taper = 1 + 0.04 * np.sin(rng.uniform(1, 3) * z + rng.uniform(0, 2 * np.pi))
    body = (x / (ax * taper)) ** 2 + ((y - 0.05) / (ay * taper)) ** 2 < 1
    inside = (x / (ax * taper - rim)) ** 2 + ((y - 0.05) / (ay * taper - rim)) ** 2 < 1
    hu = np.full(shape, -1000.0, dtype=np.float32)
    hu[body] = rng.normal(-100, 10)
    hu[inside] = rng.normal(30, 5)
    label = np.zeros(shape, dtype=np.uint8)
    hu_of = {"liver": (60, 4), "spleen": (45, 4), "kidney_left": (150, 15), "aorta": (200, 20)}
    hu_of["kidney_right"] = hu_of["kidney_left"]
    for name, mask in _organs(rng, grid).items():
        mask = mask & inside
        hu[mask] = rng.normal(*hu_of[name])
        label[mask] = LABELS[name]
    # spine: vertebral body (cortical shell, cancellous core, discs every ~3 cm) and spinous process
    sy, rv = 0.38 + rng.uniform(-0.02, 0.02), rng.uniform(0.11, 0.13)
    r2 = (x / rv) ** 2 + ((y - sy) / rv) ** 2
    z_mm = np.arange(d, dtype=np.float32)[:, None, None] * spacing_z + rng.uniform(0, 30)
    disc = (z_mm % rng.uniform(28, 34)) < 6
    spine = np.broadcast_to(r2 < 1, shape) | np.broadcast_to(
        (x / 0.04) ** 2 + ((y - sy - 0.2) / 0.07) ** 2 < 1, shape
    )
    bone = np.where(r2 < 0.6, rng.normal(230, 30), rng.normal(700, 100))
    hu = np.where(spine & inside, np.where(disc & (r2 < 1), 90.0, bone), hu).astype(np.float32)
    label[spine & inside] = 0
    hu = ndimage.gaussian_filter(hu, sigma=(0.4, 0.7, 0.7))  # partial volume at edges
    hu += rng.normal(0, rng.uniform(8, 20), size=shape).astype(np.float32)
    a = rng.uniform(-1, 1, size=5)
    gain = 1 + 0.015 * (a[0] * x + a[1] * y + a[2] * z + a[3] * (x**2 + y**2 - 1)) / 4
    offset = 8 * (a[4] * x - a[2] * y) / 2  # a gain of 1.5 % moves soft tissue by 15 HU
    hu = (hu + 1000) * gain - 1000 + offset
    return np.clip(np.rint(hu), -1024, 3071).astype(np.int16), label


def make_dataset(
    output: str | Path,
    num_cases: int = 20,
    seed: int = 0,
    size_range: tuple[int, int] = (96, 128),
    slices_range: tuple[int, int] = (24, 48),
    inplane_spacing_range: tuple[float, float] = (0.7, 1.0),
    slice_spacing_range: tuple[float, float] = (2.5, 5.0),
) -> Path:
    """Write a synthetic dataset in nnU-Net v2 raw layout.

    Args:
        output: Dataset folder (created); existing cases of the same names are replaced.
        num_cases: Number of cases, named ``synth_000``, ``synth_001``, ...
        seed: Seed; case ``i`` is drawn from ``numpy.random.default_rng([seed, i])``.
        size_range: Inclusive range of the in-plane size (height and width drawn separately).
        slices_range: Inclusive range of the number of slices.
        inplane_spacing_range: Range of the in-plane pixel size in mm (same for rows and columns).
        slice_spacing_range: Range of the slice spacing in mm.

    Returns:
        The dataset folder.

    Raises:
        ValueError: If ``num_cases`` < 1 or a range is empty.
    """
    if num_cases < 1:
        msg = f"num_cases must be >= 1, got {num_cases}"
        raise ValueError(msg)
    for name, (lo, hi) in {"size_range": size_range, "slices_range": slices_range}.items():
        if not 1 <= lo <= hi:
            msg = f"{name} must be (low, high) with 1 <= low <= high, got {(lo, hi)}"
            raise ValueError(msg)
    output = Path(output)
    for i in range(num_cases):
        rng = np.random.default_rng([seed, i])
        shape = (
            int(rng.integers(slices_range[0], slices_range[1] + 1)),
            *(int(s) for s in rng.integers(size_range[0], size_range[1] + 1, size=2)),
        )
        s_xy = round(float(rng.uniform(*inplane_spacing_range)), 3)
        s_z = round(float(rng.uniform(*slice_spacing_range)), 2)
        image, label = make_case(rng, shape, s_z)
        affine = np.diag([-s_xy, -s_xy, s_z, 1.0])
        affine[:3, 3] = (
            s_xy * shape[2] / 2,
            s_xy * shape[1] / 2,
            -s_z * shape[0] / 2 + rng.uniform(-50, 50),
        )
        case = f"synth_{i:03d}"
        write_nifti(output / "imagesTr" / f"{case}_0000.nii.gz", image, affine)
        write_nifti(output / "labelsTr" / f"{case}.nii.gz", label, affine)
    save_json(
        output / "dataset.json",
        {
            "name": "SyntheticCT",
            "description": "Synthetic abdominal CT made by python -m data_tools.synthetic",
            "channel_names": {"0": "CT"},
            "labels": LABELS,
            "numTraining": num_cases,
            "file_ending": ".nii.gz",
        },
    )
    return output


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m data_tools.synthetic --output DIR --num_cases N --seed S``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True, type=Path, help="dataset folder to write")
    parser.add_argument("--num_cases", type=int, default=20, help="number of cases (default 20)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    args = parser.parse_args(argv)
    make_dataset(args.output, args.num_cases, args.seed)
    print(f"wrote {args.num_cases} cases to {args.output}")


if __name__ == "__main__":
    main()
