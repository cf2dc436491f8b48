"""SegVol's dataset builder: NIfTI image / label folders to one M3D-Seg dataset code.

``python -m data_tools.build_dataset --image-dir IMAGES --label-dir LABELS --code 0000
--categories liver,kidney --test-ratio 0.2 --out DATA`` writes, as SegVol's
``data_process/train_data_process.py``::

    DATA/0000/0000.json                         name, description, tensorImageSize, modality,
                                                labels {"0": "background", "1": ...},
                                                numTraining, numTest, train / test
                                                [{image, label}] (absolute paths)
    DATA/0000/<case>/image.npy                  float32 (1, X, Y, Z), foreground clip + z-score
    DATA/0000/<case>/mask_(C, X, Y, Z).npz      scipy csr of the one-hot labels, (C, X*Y*Z)

Arrays keep the NIfTI's voxel order ``(X, Y, Z)`` (no reorientation, as the original, unless
``--orientation`` is given). The image is normalised as SegVol does: voxels above the volume's
mean are the foreground; the image is clipped to the foreground's 0.05 / 99.95 percentiles and
z-scored with the foreground's mean and standard deviation (taken before clipping). Label value
``k`` is category ``k`` of ``--categories``; 0 is background. Run the tool once per dataset, each
with its own code, to put several datasets side by side.

Deliberate differences from the original:

* Images and labels are paired by file name (``<case>.nii.gz``, or ``<case>_0000.nii.gz`` images
  with ``<case>.nii.gz`` labels), not by their position in two sorted listings; files without a
  partner are named and refused (``--skip-unpaired`` leaves them out).
* Label values outside ``0..len(categories)`` are refused, naming the file (the original
  silently dropped them).
* Each json entry also holds ``affine``, the NIfTI's voxel-to-world matrix of the stored
  ``(X, Y, Z)`` axes, so predictions can be written back as NIfTI on the source grid; readers of
  the original ignore the extra key.
* The split is seeded (``--seed``) and recomputed from all cases on every run; a finished case
  (both files present) is skipped, so an interrupted run resumes. Files are written atomically.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import sparse

from data_tools.parallel import run_jobs
from segfm.data.io.atomic import (
    atomic_path,
    remove_temporaries,
    reported_write,
    save_json,
    save_npy,
)
from segfm.data.io.json_file import read_json
from segfm.data.io.nifti import read_nifti
from segfm.errors import DataError, SegfmError

_ENDINGS = (".nii.gz", ".nii")


@dataclass(frozen=True)
class Pair:
    """An image and its label.

    Attributes:
        case: Case name (file name without ending, and without an image's ``_0000``).
        image: Image file.
        label: Label file.
    """

    case: str
    image: Path
    label: Path


@dataclass(frozen=True)
class Summary:
    """What a run did.

    Attributes:
        written: Cases processed by this run.
        skipped: Cases whose outputs existed already.
        train: Training cases of the json.
        test: Test cases of the json.
    """

    written: list[str]
    skipped: list[str]
    train: list[str]
    test: list[str]


def _stem(path: Path) -> str | None:
    """File name without its NIfTI ending, or None for other files."""
    name = path.name
    ending = next((e for e in _ENDINGS if name.endswith(e)), None)
    return None if ending is None or name.startswith(".") else name[: -len(ending)]


def pair_files(image_dir: Path, label_dir: Path, skip_unpaired: bool = False) -> list[Pair]:
    """Pair the NIfTI files of two folders by name.

    Args:
        image_dir: Images ``<case>.nii.gz`` or ``<case>_0000.nii.gz``.
        label_dir: Labels ``<case>.nii.gz``.
        skip_unpaired: Leave files without a partner out instead of refusing them.

    Returns:
        The pairs, sorted by case.

    Raises:
        DataError: If a folder is missing or has no NIfTI file, or files have no partner.
    """
    found: list[dict[str, Path]] = []
    for folder in (image_dir, label_dir):
        if not folder.is_dir():
            msg = f"{folder} is not a folder; check --image-dir / --label-dir"
            raise DataError(msg)
        files = {s: p for p in sorted(folder.iterdir()) if (s := _stem(p)) is not None}
        if not files:
            msg = f"{folder} holds no .nii.gz / .nii file; check --image-dir / --label-dir"
            raise DataError(msg)
        found.append(files)
    images, labels = found
    pairs, lonely = [], []
    for stem, image in images.items():
        case = stem if stem in labels else stem.removesuffix("_0000")
        if case in labels:
            pairs.append(Pair(case, image, labels.pop(case)))
        else:
            lonely.append(image)
    lonely += labels.values()
    if lonely and not skip_unpaired:
        names = ", ".join(str(p) for p in lonely[:5]) + (" ..." if len(lonely) > 5 else "")
        msg = (
            f"{len(lonely)} files have no partner of the same name: {names}; add the missing "
            "files, move these away, or pass --skip-unpaired"
        )
        raise DataError(msg)
    return sorted(pairs, key=lambda p: p.case)


def normalize(image: np.ndarray, path: Path | str = "image") -> np.ndarray:
    """SegVol's foreground clip and z-score.

    Args:
        image: Intensities, any shape.
        path: Named in errors.

    Returns:
        float32, same shape: clipped to the 0.05 / 99.95 percentiles of the voxels above the
        mean, minus their mean, over their standard deviation (at least 1e-8).

    Raises:
        DataError: If no voxel lies above the mean (a constant image).
    """
    values = np.asarray(image, dtype=np.float64)
    foreground = values[values > values.mean()]
    if not foreground.size:
        msg = f"{path} is constant ({values.flat[0] if values.size else 'empty'}); drop the case"
        raise DataError(msg)
    low, high = np.percentile(foreground, [0.05, 99.95])
    mean, std = foreground.mean(), max(float(foreground.std()), 1e-8)
    return ((np.clip(values, low, high) - mean) / std).astype(np.float32)


def one_hot(label: np.ndarray, classes: int, path: Path | str = "label") -> np.ndarray:
    """Channel ``c`` is 1 where ``label == c + 1``; int32 ``[classes, *label.shape]``.

    Raises:
        DataError: If ``label`` holds a value outside ``0..classes`` (named with the file).
    """
    values = np.unique(label)
    bad = [v for v in values.tolist() if v != int(v) or not 0 <= v <= classes]
    if bad:
        msg = (
            f"{path} holds label values {bad[:10]} outside 0..{classes} (--categories names "
            f"{classes} classes); add their categories in label order or remap the labels"
        )
        raise DataError(msg)
    ids = np.arange(1, classes + 1).reshape(-1, *([1] * label.ndim))
    return (label[None] == ids).astype(np.int32)


def _orientation(
    affine: np.ndarray, shape: Sequence[int], codes: str | None
) -> tuple[np.ndarray | None, np.ndarray]:
    """The nibabel transform from the file's axes to ``codes`` (None: keep) and the new affine."""
    if codes is None:
        return None, affine
    transform = nib.orientations.ornt_transform(
        nib.orientations.io_orientation(affine), nib.orientations.axcodes2ornt(tuple(codes))
    )
    return transform, affine @ nib.orientations.inv_ornt_aff(transform, tuple(shape))


def _stored(path: Path, orientation: str | None) -> tuple[np.ndarray, np.ndarray]:
    """A NIfTI file as the stored ``(X, Y, Z)`` array and its affine, reoriented if asked."""
    volume = read_nifti(path)
    array = volume.array.transpose(2, 1, 0)  # read_nifti gives (Z, Y, X)
    transform, affine = _orientation(volume.affine, array.shape, orientation)
    if transform is not None:
        array = nib.orientations.apply_orientation(array, transform)
    return np.ascontiguousarray(array), affine


def mask_name(classes: int, shape: Sequence[int]) -> str:
    """SegVol's mask file name, ``mask_(C, X, Y, Z).npz``."""
    return f"mask_{(classes, *(int(n) for n in shape))}.npz"


def _done(folder: Path, classes: int) -> bool:
    """Whether a case folder holds both outputs for this many categories."""
    masks = [p.name for p in folder.glob("mask_*.npz")]
    image = folder / "image.npy"
    if not image.is_file() or not masks:
        return False
    shape = np.load(image, mmap_mode="r").shape[1:]
    return mask_name(classes, shape) in masks


_Job = tuple[Pair, Path, int, str | None]  # pair, case folder, categories, orientation


def _process(job: _Job) -> tuple[str, bool]:
    """Build one case; ``(case, written)``."""
    pair, folder, classes, orientation = job
    if _done(folder, classes):
        return pair.case, False
    image, _ = _stored(pair.image, orientation)
    label, _ = _stored(pair.label, orientation)
    if image.shape != label.shape:
        msg = (
            f"{pair.label} has shape {label.shape} (X, Y, Z) but its image {pair.image} has "
            f"{image.shape}; resample the label onto the image grid"
        )
        raise DataError(msg)
    masks = one_hot(label, classes, pair.label)
    for old in folder.glob("mask_*.npz"):
        old.unlink()
    save_npy(folder / "image.npy", normalize(image, pair.image)[None])
    path = folder / mask_name(classes, image.shape)
    with reported_write(path), atomic_path(path) as tmp, open(tmp, "wb") as f:
        sparse.save_npz(f, sparse.csr_matrix(masks.reshape(classes, -1)))
    return pair.case, True


def _split(cases: list[str], test_ratio: float, seed: int) -> tuple[list[str], list[str]]:
    """Seeded split; ``ceil(test_ratio * n)`` test cases as scikit-learn's ``train_test_split``."""
    order = [cases[i] for i in np.random.default_rng(seed).permutation(len(cases))]
    n_test = math.ceil(test_ratio * len(cases)) if len(cases) > 1 else 0
    return sorted(order[n_test:]), sorted(order[:n_test])


def _check_labels(json_path: Path, labels: dict[str, str], code_dir: Path) -> None:
    """Refuse to resume a code built with other categories."""
    if not json_path.is_file():
        return
    old = read_json(json_path, "delete it or choose another --code").get("labels")
    if old != labels and any(code_dir.glob("*/mask_*.npz")):
        msg = (
            f"{json_path} was built with labels {old}, not {labels}; delete {code_dir} to rebuild "
            "with the new categories, or choose another --code"
        )
        raise DataError(msg)


def build_dataset(
    image_dir: str | os.PathLike[str],
    label_dir: str | os.PathLike[str],
    code: str,
    categories: Sequence[str],
    out: str | os.PathLike[str],
    test_ratio: float = 0.2,
    seed: int = 0,
    workers: int | None = None,
    modality: str = "CT",
    orientation: str | None = None,
    skip_unpaired: bool = False,
    progress: bool = True,
) -> Summary:
    """Build one M3D-Seg dataset code (see the module docstring for the outputs).

    Args:
        image_dir: Folder of NIfTI images.
        label_dir: Folder of NIfTI labels, value ``k`` for ``categories[k - 1]``.
        code: Dataset code, the output folder name (``0000``, ``0001``, ...).
        categories: Class names in label-value order, background left out.
        out: The M3D-Seg root.
        test_ratio: Share of cases in the json's ``test`` list.
        seed: Seed of the split.
        workers: Processes (default: all cores); 0 or 1 runs in this process.
        modality: Written to the json's ``modality``.
        orientation: Reorient to these axis codes (``RAS``) first; None keeps the stored order.
        skip_unpaired: Leave files without a partner out instead of refusing them.
        progress: Show a progress bar.

    Returns:
        Which cases were written, skipped, and the split.

    Raises:
        ValueError: If an argument is invalid.
        DataError: If an input file is missing, unreadable or inconsistent.
    """
    names = [c.strip() for c in categories]
    if not names or any(not n for n in names) or len(set(names)) != len(names):
        msg = f"categories must be distinct non-empty names, got {list(categories)}"
        raise ValueError(msg)
    if not 0 <= test_ratio < 1:
        msg = f"test_ratio must be in [0, 1), got {test_ratio}"
        raise ValueError(msg)
    if not code or "/" in code or code.startswith("."):
        msg = f"code {code!r} must be a non-empty folder name"
        raise ValueError(msg)
    if orientation is not None:
        orientation = orientation.upper()
        axes = [{"L", "R"}, {"A", "P"}, {"S", "I"}]
        if len(orientation) != 3 or sorted(
            next(i for i, a in enumerate(axes) if c in a) for c in orientation if c in "LRAPSI"
        ) != [0, 1, 2]:
            msg = f"orientation {orientation!r} is not three axis codes such as RAS or LPS"
            raise ValueError(msg)
    pairs = pair_files(Path(image_dir), Path(label_dir), skip_unpaired)
    code_dir = Path(out).resolve() / code
    json_path = code_dir / f"{code}.json"
    labels = {"0": "background"} | {str(i + 1): n for i, n in enumerate(names)}
    _check_labels(json_path, labels, code_dir)
    code_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(p, code_dir / p.case, len(names), orientation) for p in pairs]
    written: list[str] = []
    skipped: list[str] = []
    try:
        for case, new in run_jobs(_process, jobs, workers, desc=code, progress=progress):
            (written if new else skipped).append(case)
    finally:
        for _, folder, _, _ in jobs:
            remove_temporaries(folder)
    train, test = _split([p.case for p in pairs], test_ratio, seed)
    by_case = {p.case: p for p in pairs}

    def entry(case: str) -> dict[str, object]:
        folder = code_dir / case
        shape = np.load(folder / "image.npy", mmap_mode="r").shape[1:]
        header: nib.Nifti1Image = nib.load(by_case[case].image)  # type: ignore[assignment]
        _, affine = _orientation(header.affine, header.shape[:3], orientation)
        return {
            "image": str(folder / "image.npy"),
            "label": str(folder / mask_name(len(names), shape)),
            "affine": np.asarray(affine, dtype=np.float64).tolist(),
        }

    save_json(
        json_path,
        {
            "name": f"{code} Dataset",
            "description": f"{code} Dataset",
            "tensorImageSize": "4D",
            "modality": {"0": modality},
            "labels": labels,
            "numTraining": len(train),
            "numTest": len(test),
            "train": [entry(c) for c in train],
            "test": [entry(c) for c in test],
        },
    )
    return Summary(sorted(written), sorted(skipped), train, test)


def main(argv: list[str] | None = None) -> None:
    """Command line; see ``python -m data_tools.build_dataset --help``."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Outputs and differences from the original: see data_tools/build_dataset.py.",
    )
    parser.add_argument("--image-dir", type=Path, required=True, help="NIfTI images")
    parser.add_argument("--label-dir", type=Path, required=True, help="NIfTI labels")
    parser.add_argument("--code", required=True, help="dataset code, e.g. 0000")
    parser.add_argument(
        "--categories", required=True, help="class names of label values 1, 2, ... comma-separated"
    )
    parser.add_argument("--out", type=Path, required=True, help="M3D-Seg root")
    parser.add_argument("--test-ratio", type=float, default=0.2, help="test share (0.2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split (0)")
    parser.add_argument("--workers", type=int, help="processes (default: all cores)")
    parser.add_argument("--modality", default="CT", help="json modality (CT)")
    parser.add_argument("--orientation", help="reorient first, e.g. RAS (default: keep)")
    parser.add_argument("--skip-unpaired", action="store_true", help="leave unpaired files out")
    args = parser.parse_args(argv)
    try:
        summary = build_dataset(
            args.image_dir,
            args.label_dir,
            args.code,
            args.categories.split(","),
            args.out,
            args.test_ratio,
            args.seed,
            args.workers,
            args.modality,
            args.orientation,
            args.skip_unpaired,
        )
    except SegfmError as e:
        sys.exit(f"error: {e}")
    except ValueError as e:
        parser.error(str(e))
    print(
        f"{len(summary.written)} cases written, {len(summary.skipped)} already done; "
        f"{len(summary.train)} train / {len(summary.test)} test: {args.out / args.code}"
    )


if __name__ == "__main__":
    main()
