"""SegVol's pseudo masks: Felzenszwalb regions plus the ground truth, for every M3D-Seg case.

``python -m data_tools.build_pseudo_mask --root DATA --code 0000`` writes, for every case of
``DATA/0000`` (the cases of ``0000.json``'s train and test lists, or else every folder holding an
``image.npy``)::

    DATA/0000/<case>/pseudo_mask.npy    int64 (X, Y, Z) = --spatial-size (256, 256, 32)

where the original ``data_process/pseudo_mask_process.py`` writes it, in its shape, so SegVol's own
``train.py`` reads it too (its docs say ``fh_seg/``; its code writes and reads this file). Steps
as the original: the image ``(1, X, Y, Z)`` is resized to ``--spatial-size`` with area
interpolation, segmented by :func:`data_tools.felzenszwalb3d.felzenszwalb_3d` into regions
``0..K-1``, then the voxels of ground-truth channel ``c`` get id ``K + c`` (``combine_gt_fh``).
Differences from the original:

* masks are resized with nearest neighbour; the original resized the one-hot masks with area
  interpolation and kept only voxels still exactly 1, dropping organ borders and thin organs;
* the segmentation is vectorised (seconds instead of minutes per volume) with the same result;
* the original's ``scale`` is not an option: its Felzenszwalb predicate is commented out and the
  value never used (see :mod:`data_tools.felzenszwalb3d`);
* cases come from the json or from folders with ``image.npy`` (the original took the first two
  sorted files of every folder as image and mask); ``--workers`` sets the processes (the original
  always started 10); a bad file stops the tool with one line naming it.

Each file is written atomically; cases whose ``pseudo_mask.npy`` exists are skipped, so an
interrupted run resumes (``--overwrite`` redoes them).
"""

from __future__ import annotations

import argparse
import ast
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import sparse

from data_tools.felzenszwalb3d import felzenszwalb_3d
from data_tools.parallel import run_jobs
from segfm.data.io.atomic import remove_temporaries, save_npy
from segfm.data.io.json_file import read_json
from segfm.errors import DataError, SegfmError

PSEUDO_MASK = "pseudo_mask.npy"
_REBUILD = "rebuild the case with python -m data_tools.build_dataset"


@dataclass(frozen=True)
class Settings:
    """Options of the segmentation, the same for every case."""

    sigma: float = 0.8
    min_size: int = 1000
    merge_percentile: float = 25.0
    spatial_size: tuple[int, int, int] = (256, 256, 32)


@dataclass(frozen=True)
class Summary:
    """What a run did.

    Attributes:
        written: Case folders written by this run.
        skipped: Case folders whose ``pseudo_mask.npy`` existed already.
    """

    written: list[Path]
    skipped: list[Path]


def find_case_dirs(root: str | os.PathLike[str], code: str) -> list[Path]:
    """The case folders of one dataset, sorted.

    Args:
        root: Folder holding one folder per dataset code.
        code: Dataset code (``"0000"``).

    Returns:
        The folders of the json's train and test cases, or, without json, every folder of
        ``<root>/<code>`` that holds an ``image.npy``.

    Raises:
        DataError: If the dataset folder is missing or holds no case.
    """
    folder = Path(root) / code
    if not folder.is_dir():
        msg = f"{folder} is not a folder; check --root and --code"
        raise DataError(msg)
    listing = folder / f"{code}.json"
    if listing.exists():
        data = read_json(listing, _REBUILD)
        entries = [*data.get("train", []), *data.get("test", [])]
        # json paths are absolute or relative to somewhere else: the case folder name is enough
        cases = {folder / Path(str(entry["image"])).parent.name for entry in entries}
    else:
        cases = {p.parent for p in folder.glob("*/image.npy")}
    if not cases:
        msg = f"{folder} holds no case (no <case>/image.npy); {_REBUILD}"
        raise DataError(msg)
    return sorted(cases)


def read_case(case_dir: Path) -> tuple[np.ndarray, sparse.csr_matrix, tuple[int, ...]]:
    """Read one case: the image and the sparse one-hot masks.

    Args:
        case_dir: ``<root>/<code>/<case>``.

    Returns:
        ``(image, masks, shape)``: float32 ``[X, Y, Z]``, the csr matrix ``[C, X*Y*Z]`` and the
        mask shape ``(C, X, Y, Z)`` parsed from the file name.

    Raises:
        DataError: If a file is missing, unreadable or inconsistent, naming it.
    """
    image_path = case_dir / "image.npy"
    if not image_path.is_file():
        msg = f"{image_path} is missing; {_REBUILD}"
        raise DataError(msg)
    found = sorted(case_dir.glob("mask_*.npz"))
    if len(found) != 1:
        msg = f"{case_dir} must hold one mask_(C, X, Y, Z).npz, found {len(found)}; {_REBUILD}"
        raise DataError(msg)
    mask_path = found[0]
    try:
        image = np.load(image_path)
        masks = sparse.load_npz(mask_path).tocsr()
        shape = tuple(ast.literal_eval(mask_path.stem.removeprefix("mask_")))
    except (OSError, ValueError, SyntaxError) as e:
        msg = f"cannot read {image_path} or {mask_path} ({e}); {_REBUILD}"
        raise DataError(msg) from e
    if image.ndim != 4 or image.shape[0] != 1:
        msg = f"{image_path} has shape {image.shape}, expected (1, X, Y, Z); {_REBUILD}"
        raise DataError(msg)
    if len(shape) != 4 or shape[1:] != image.shape[1:] or masks.shape != (shape[0], image[0].size):
        msg = (
            f"{mask_path} holds {masks.shape} for shape {shape}, its image {image.shape}; "
            f"{_REBUILD}"
        )
        raise DataError(msg)
    return image[0].astype(np.float32, copy=False), masks, shape


def resize_area(image: np.ndarray, size: tuple[int, int, int]) -> np.ndarray:
    """Resize a 3D image with area interpolation (MONAI ``Resize``'s default, as the original).

    Args:
        image: ``[X, Y, Z]``.
        size: Output shape.

    Returns:
        float32 ``size``.
    """
    volume = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
    return F.interpolate(volume, size=size, mode="area")[0, 0].numpy()


def nearest_index(length: int, size: int) -> np.ndarray:
    """Source index of every output index of a nearest-neighbour resize (PyTorch ``nearest``)."""
    return np.minimum(np.floor(np.arange(size) * (length / size)).astype(np.int64), length - 1)


def resize_masks(
    masks: sparse.csr_matrix, shape: tuple[int, ...], size: tuple[int, int, int]
) -> np.ndarray:
    """Resize sparse one-hot masks with nearest neighbour, one channel at a time.

    Args:
        masks: csr ``[C, X*Y*Z]``.
        shape: ``(C, X, Y, Z)``.
        size: Output spatial shape.

    Returns:
        bool ``[C, *size]``.
    """
    grid = np.ix_(*(nearest_index(n, s) for n, s in zip(shape[1:], size, strict=True)))
    out = np.zeros((shape[0], *size), dtype=bool)
    channel = np.zeros(int(np.prod(shape[1:])), dtype=bool)
    for c in range(shape[0]):
        row = slice(masks.indptr[c], masks.indptr[c + 1])
        voxels = masks.indices[row][masks.data[row] != 0]
        channel[voxels] = True
        out[c] = channel.reshape(shape[1:])[grid]
        channel[voxels] = False
    return out


def combine_gt_fh(regions: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Give the voxels of ground-truth channel ``c`` the new id ``K + c`` (``K`` regions).

    Args:
        regions: int64 ``[*S]`` Felzenszwalb regions ``0..K-1``.
        masks: bool ``[C, *S]`` one-hot ground truth.

    Returns:
        int64 ``[*S]``; later channels win where channels overlap, as in the original.
    """
    out = regions.copy()
    first = int(regions.max()) + 1
    for c, mask in enumerate(masks):
        out[mask] = first + c
    return out


def pseudo_mask(case_dir: Path, settings: Settings) -> np.ndarray:
    """Compute the pseudo mask of one case (nothing is written).

    Args:
        case_dir: ``<root>/<code>/<case>``.
        settings: Segmentation options.

    Returns:
        int64 ``settings.spatial_size``.
    """
    image, masks, shape = read_case(case_dir)
    size = settings.spatial_size
    regions = felzenszwalb_3d(
        resize_area(image, size),
        sigma=settings.sigma,
        min_size=settings.min_size,
        merge_percentile=settings.merge_percentile,
    )
    return combine_gt_fh(regions, resize_masks(masks, shape, size))


_Job = tuple[Path, Settings, bool]  # case folder, settings, overwrite


def _run(job: _Job) -> tuple[Path, bool]:
    """Pool entry point: ``(case folder, written)``."""
    case_dir, settings, overwrite = job
    target = case_dir / PSEUDO_MASK
    if target.exists() and not overwrite:
        return case_dir, False
    save_npy(target, pseudo_mask(case_dir, settings))
    return case_dir, True


def build_pseudo_masks(
    root: str | os.PathLike[str],
    codes: str | list[str],
    sigma: float = 0.8,
    min_size: int = 1000,
    merge_percentile: float = 25.0,
    spatial_size: tuple[int, int, int] = (256, 256, 32),
    workers: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Summary:
    """Write ``pseudo_mask.npy`` into every case folder of the given datasets.

    Args:
        root: Folder holding one folder per dataset code (the M3D-Seg layout).
        codes: Dataset code(s), e.g. ``"0000"``.
        sigma: Gaussian smoothing in voxels before segmenting.
        min_size: Regions with fewer voxels are joined to a neighbour.
        merge_percentile: Voxels joined across edges cheaper than this percentile of the
            non-zero costs.
        spatial_size: Grid ``(X, Y, Z)`` of the pseudo masks (the original's 256, 256, 32).
        workers: Processes (default: all cores); 0 or 1 runs in this process.
        overwrite: Redo cases whose pseudo mask exists instead of skipping them.
        progress: Show a progress bar.

    Returns:
        Which case folders were written and which skipped.

    Raises:
        ValueError: If an option is out of range.
        DataError: If a dataset or case file is missing, unreadable or inconsistent.
    """
    if sigma < 0 or min_size < 1 or not 0 <= merge_percentile <= 100:
        msg = f"invalid sigma {sigma}, min_size {min_size} or merge_percentile {merge_percentile}"
        raise ValueError(msg)
    if len(spatial_size) != 3 or min(spatial_size) < 2:
        msg = f"spatial_size must be three sizes >= 2, got {spatial_size}"
        raise ValueError(msg)
    settings = Settings(sigma, min_size, merge_percentile, tuple(int(s) for s in spatial_size))
    codes = [codes] if isinstance(codes, str) else list(codes)
    cases = [case for code in codes for case in find_case_dirs(root, code)]
    jobs = [(case, settings, overwrite) for case in cases]
    summary = Summary([], [])
    try:
        for case, written in run_jobs(_run, jobs, workers, desc="cases", progress=progress):
            (summary.written if written else summary.skipped).append(case)
    finally:
        for case in cases:
            remove_temporaries(case)
    summary.written.sort()
    summary.skipped.sort()
    return summary


def main(argv: list[str] | None = None) -> None:
    """Command line; see ``python -m data_tools.build_pseudo_mask --help``."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Outputs and differences from the original: see the docstring of "
        "data_tools/build_pseudo_mask.py.",
    )
    parser.add_argument("--root", type=Path, required=True, help="M3D-Seg root folder")
    parser.add_argument("--code", nargs="+", required=True, help="dataset code(s), e.g. 0000")
    parser.add_argument("--sigma", type=float, default=0.8, help="smoothing in voxels (0.8)")
    parser.add_argument("--min-size", type=int, default=1000, help="smallest region (1000)")
    parser.add_argument(
        "--merge-percentile", type=float, default=25.0, help="merge threshold percentile (25)"
    )
    parser.add_argument(
        "--spatial-size",
        type=int,
        nargs=3,
        default=(256, 256, 32),
        metavar=("X", "Y", "Z"),
        help="grid of the pseudo masks (256 256 32)",
    )
    parser.add_argument("--workers", type=int, help="processes (default: all cores)")
    parser.add_argument("--overwrite", action="store_true", help="redo finished cases")
    args = parser.parse_args(argv)
    try:
        summary = build_pseudo_masks(
            args.root,
            args.code,
            sigma=args.sigma,
            min_size=args.min_size,
            merge_percentile=args.merge_percentile,
            spatial_size=tuple(args.spatial_size),
            workers=args.workers,
            overwrite=args.overwrite,
        )
    except SegfmError as e:
        sys.exit(f"error: {e}")
    except ValueError as e:
        parser.error(str(e))
    print(f"{len(summary.written)} pseudo masks written, {len(summary.skipped)} already done")


if __name__ == "__main__":
    main()
