"""MedSAM's CT/MR preprocessing: NIfTI volumes to per-case npz and per-slice npy files.

``python -m data_tools.pre_ct_mr --nnunet Dataset001_X --output OUT`` (or ``--images DIR
--labels DIR``) writes::

    OUT/npz/<prefix>_<case>.npz         imgs uint8 [Z, Y, X] (every slice), gts [Z, Y, X]
                                        (uint8, uint16 above 255 labels), spacing float64 (z, y, x),
                                        affine float64 (4, 4) of the source NIfTI, source (path)
    OUT/imgs/<prefix>_<case>-NNN.npy    float32 [S, S, 3] in [0, 1], slice NNN resized to S
    OUT/gts/<prefix>_<case>-NNN.npy     uint8 [S, S] (uint16 above 255 labels), nearest resize
    OUT/labels.json                     {"1": "liver", ...} from dataset.json, when there is one
    OUT/preprocess.json                 the settings of each prefix, so a resumed run cannot mix

Steps, as in MedSAM's ``pre_CT_MR.py`` (see :mod:`data_tools.ct_mr_ops`): label remapping, small
objects removed in 3D then per slice, CT windowing or MR percentile normalisation to uint8, then
every slice with foreground resized to ``S`` x ``S``. Deliberate differences from the original:

* ``npz`` keeps the *whole* volume, not only the slices with foreground, so predictions made on it
  can be pasted back onto the source grid with ``affine``; per-slice files keep only foreground.
* ``spacing`` is in array order ``(z, y, x)``; the original stored SimpleITK's ``GetSpacing()``
  ``(x, y, z)`` next to ``(z, y, x)`` arrays.
* ``NNN`` is the slice's z index in the volume (the original numbered within the foreground
  subset), so a slice file names its place in the npz volume.
* Images are read with nibabel (arrays transposed from its ``(X, Y, Z)``), resized with Pillow,
  and may be stored as float32 (``--dtype float64`` gives the original's 8-byte values).

A case with no foreground left after cleaning gets its npz but no slice files. Every case is
written atomically, npz last: a case whose npz exists is finished and is skipped
when the tool runs again (``--overwrite`` redoes it). Problems with the data stop the tool with one
line naming the file, leaving only finished cases behind.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from data_tools.ct_mr_ops import (
    parse_remap,
    remap_labels,
    remove_small_objects,
    resize_image_slice,
    resize_label_slice,
)
from data_tools.parallel import run_jobs
from segfm.data.io.atomic import remove_temporaries, save_json, save_npy, save_npz
from segfm.data.io.json_file import read_json
from segfm.data.io.nifti import read_nifti
from segfm.data.io.nnunet import CaseFiles, find_cases, label_names, read_dataset_json
from segfm.errors import DataError, SegfmError
from segfm.transforms.intensity import WINDOWS, normalize_mr, window_ct

_DELETE = "delete it and run again with --overwrite"


@dataclass(frozen=True)
class Settings:
    """Everything that decides the content of the output files."""

    modality: str
    window_level: float | None
    window_width: float | None
    image_size: int
    dtype: str
    min_size_3d: int
    min_size_2d: int
    remap: dict[int, int]


@dataclass(frozen=True)
class Summary:
    """What a run did.

    Attributes:
        written: Output names (``<prefix>_<case>``) processed by this run.
        skipped: Output names whose outputs existed already.
    """

    written: list[str]
    skipped: list[str]


def _integer_label(label: np.ndarray, path: Path) -> np.ndarray:
    """Labels as non-negative integers (NIfTI labels are often stored as floats)."""
    if not np.issubdtype(label.dtype, np.integer):
        if not np.array_equal(label, np.round(label)):
            msg = f"{path} holds non-integer values; store class ids as integers"
            raise DataError(msg)
        label = label.astype(np.int64)
    if label.size and label.min() < 0:
        msg = f"{path} holds negative labels; class ids must be >= 0 (use --remap after fixing)"
        raise DataError(msg)
    return label


def _process_case(case: CaseFiles, name: str, out: Path, s: Settings, overwrite: bool) -> bool:
    """Preprocess one case; return False if its outputs existed and were kept."""
    npz = out / "npz" / f"{name}.npz"
    if npz.exists() and not overwrite:
        return False
    stale = re.compile(rf"{re.escape(name)}-\d+\.npy")
    for folder in (out / "imgs", out / "gts"):
        for old in folder.glob(f"{name}-*.npy"):
            if stale.fullmatch(old.name):
                old.unlink()
    image, label = read_nifti(case.image), read_nifti(case.label)
    if image.array.shape != label.array.shape:
        msg = (
            f"{case.label} has shape {label.array.shape} (z, y, x) but its image {case.image} has "
            f"{image.array.shape}; resample the label onto the image grid"
        )
        raise DataError(msg)
    gts = _integer_label(label.array, case.label)
    gts = remove_small_objects(remap_labels(gts, s.remap), s.min_size_3d, s.min_size_2d)
    top = int(gts.max()) if gts.size else 0
    if top > np.iinfo(np.uint16).max:
        msg = f"{case.label} has label {top} > 65535; remap it with --remap"
        raise DataError(msg)
    gts = gts.astype(np.uint8 if top <= 255 else np.uint16)  # [Z, Y, X]
    try:
        if s.modality == "CT":
            imgs = window_ct(image.array, s.window_level or 0.0, s.window_width or 0.0)
        else:
            imgs = normalize_mr(image.array)  # [Z, Y, X] uint8
    except ValueError as e:
        msg = f"cannot normalise {case.image}: {e}; check --modality"
        raise DataError(msg) from e
    for z in np.flatnonzero(gts.reshape(len(gts), -1).any(axis=1)):
        save_npy(
            out / "imgs" / f"{name}-{z:03d}.npy", resize_image_slice(imgs[z], s.image_size, s.dtype)
        )
        save_npy(out / "gts" / f"{name}-{z:03d}.npy", resize_label_slice(gts[z], s.image_size))
    save_npz(
        npz,
        imgs=imgs,
        gts=gts,
        spacing=np.asarray(image.spacing, dtype=np.float64),
        affine=image.affine,
        source=str(case.image),
    )
    return True


_Job = tuple[CaseFiles, str, Path, Settings, bool]  # case, output name, OUT, settings, overwrite


def _run(job: _Job) -> tuple[str, bool]:
    """Pool entry point: ``(name, written)`` of one case."""
    return job[1], _process_case(*job)


def _check_settings(out: Path, prefix: str, settings: Settings, overwrite: bool) -> None:
    """Record the settings of ``prefix`` in ``preprocess.json``; refuse to resume with others."""
    path = out / "preprocess.json"
    recorded = read_json(path, _DELETE) if path.exists() else {}
    mine = json.loads(json.dumps(asdict(settings)))  # JSON-normalised (int keys become str)
    old = recorded.get(prefix, mine)
    finished = any((out / "npz").glob(f"{glob.escape(prefix)}_*.npz"))
    if old != mine and finished and not overwrite:
        changes = ", ".join(f"{k} {old.get(k)} -> {v}" for k, v in mine.items() if old.get(k) != v)
        msg = (
            f"{path} records other settings for prefix {prefix!r} ({changes}); "
            "use --overwrite to redo every case, or another --output"
        )
        raise DataError(msg)
    save_json(path, {**recorded, prefix: mine})


def _write_label_names(out: Path, names: dict[int, str], remap: dict[int, int]) -> None:
    """Merge the class names, after remapping, into ``labels.json``."""
    kept = {i: name for i, name in names.items() if i not in remap}
    for old, new in remap.items():
        if new != 0 and old in names:
            kept.setdefault(new, names[old])  # a merged id keeps the name it had
    path = out / "labels.json"
    merged = read_json(path, _DELETE) if path.exists() else {}
    for key, name in kept.items():
        if merged.get(str(key), name) != name:
            msg = (
                f"{path} names label {key} {merged[str(key)]!r} but this dataset {name!r}; "
                "use --remap or another --output"
            )
            raise DataError(msg)
        merged[str(key)] = name
    save_json(path, dict(sorted(merged.items(), key=lambda kv: int(kv[0]))))


def _settings(
    modality: str,
    window: str | None,
    window_level: float | None,
    window_width: float | None,
    image_size: int,
    dtype: str,
    min_size_3d: int,
    min_size_2d: int,
    remap: dict[int, int],
) -> Settings:
    """Check the options of :func:`preprocess` and resolve the CT window."""
    if modality not in ("CT", "MR") or dtype not in ("float32", "float64") or image_size < 1:
        msg = f"invalid modality {modality!r}, dtype {dtype!r} or image_size {image_size}"
        raise ValueError(msg)
    if modality == "MR" and (window or window_level is not None or window_width is not None):
        msg = "window options apply to CT only; drop them for MR"
        raise ValueError(msg)
    if (window_level is None) != (window_width is None):
        msg = "give window_level and window_width together"
        raise ValueError(msg)
    if window is not None and window not in WINDOWS:
        msg = f"window {window!r} is not one of {sorted(WINDOWS)}"
        raise ValueError(msg)
    if modality == "CT" and window_level is None:
        window_level, window_width = WINDOWS[window or "abdomen"]
    return Settings(
        modality, window_level, window_width, image_size, dtype, min_size_3d, min_size_2d, remap
    )


def preprocess(
    output: str | os.PathLike[str],
    images: str | os.PathLike[str] | None = None,
    labels: str | os.PathLike[str] | None = None,
    nnunet: str | os.PathLike[str] | None = None,
    dataset_json: str | os.PathLike[str] | None = None,
    modality: Literal["CT", "MR"] | None = None,
    window: Literal["abdomen", "chest", "brain"] | None = None,
    window_level: float | None = None,
    window_width: float | None = None,
    image_size: int = 1024,
    dtype: Literal["float32", "float64"] = "float32",
    min_size_3d: int = 1000,
    min_size_2d: int = 100,
    remap: str | dict[int, int] | None = None,
    prefix: str | None = None,
    file_ending: str | None = None,
    workers: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Summary:
    """Preprocess a dataset for MedSAM (see the module docstring for the outputs).

    Args:
        output: Output folder ``OUT``.
        images: Folder of ``<case>_0000<ending>`` images (with ``labels``).
        labels: Folder of ``<case><ending>`` labels (with ``images``).
        nnunet: nnU-Net raw dataset folder (``imagesTr``, ``labelsTr``, ``dataset.json``), instead
            of ``images`` and ``labels``.
        dataset_json: ``dataset.json`` for class names and file ending; defaults to the one of
            ``nnunet``.
        modality: ``CT`` (windowing) or ``MR`` (percentiles); defaults to ``CT`` when
            ``dataset.json`` names channel 0 ``CT`` or there is no ``dataset.json``, else ``MR``.
        window: CT window preset (default ``abdomen``); ignored if level and width are given.
        window_level: CT window level in HU (with ``window_width``).
        window_width: CT window width in HU (with ``window_level``).
        image_size: Side ``S`` of the per-slice arrays.
        dtype: Type of the per-slice images.
        min_size_3d: 3D components with fewer voxels are removed from the labels.
        min_size_2d: Then 2D components with fewer pixels, per slice.
        remap: Label remapping applied first, ``"12:0,13:1"`` or ``{12: 0, 13: 1}``.
        prefix: Prefix of the output names; defaults to the modality. The text before its first
            ``_`` becomes the dataset name of the npy readers.
        file_ending: Ending of the NIfTI files; defaults to ``dataset.json``'s, else ``.nii.gz``.
        workers: Processes (default: all cores); 0 or 1 runs in this process.
        overwrite: Redo cases whose outputs exist instead of skipping them.
        progress: Show a progress bar.

    Returns:
        Which cases were written and which skipped.

    Raises:
        ValueError: If the arguments contradict each other.
        DataError: If an input file is missing, unreadable or inconsistent.
    """
    if (images is None) != (labels is None) or (nnunet is None) == (images is None):
        msg = "give either nnunet, or both images and labels"
        raise ValueError(msg)
    if nnunet is not None:
        images, labels = Path(nnunet) / "imagesTr", Path(nnunet) / "labelsTr"
        dataset_json = dataset_json or Path(nnunet) / "dataset.json"
    image_dir, label_dir = Path(images or ""), Path(labels or "")
    meta = read_dataset_json(dataset_json) if dataset_json is not None else {}
    channel = str(meta.get("channel_names", {}).get("0", "CT"))
    settings = _settings(
        modality or ("CT" if channel.upper() == "CT" else "MR"),
        window,
        window_level,
        window_width,
        image_size,
        dtype,
        min_size_3d,
        min_size_2d,
        parse_remap(remap) if isinstance(remap, str) else dict(remap or {}),
    )
    prefix = settings.modality if prefix is None else prefix
    if not prefix or "/" in prefix or prefix.startswith("."):
        msg = f"prefix {prefix!r} must be a non-empty file name part"
        raise ValueError(msg)
    cases = find_cases(image_dir, label_dir, file_ending or meta.get("file_ending", ".nii.gz"))
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    _check_settings(out, prefix, settings, overwrite)
    if meta:
        _write_label_names(out, label_names(meta), settings.remap)
    jobs = [(case, f"{prefix}_{case.case_id}", out, settings, overwrite) for case in cases]
    summary = Summary([], [])
    try:
        for name, written in run_jobs(_run, jobs, workers, desc="cases", progress=progress):
            (summary.written if written else summary.skipped).append(name)
    finally:
        for folder in ("imgs", "gts", "npz"):
            remove_temporaries(out / folder)
    summary.written.sort()
    summary.skipped.sort()
    return summary


def main(argv: list[str] | None = None) -> None:
    """Command line; see ``python -m data_tools.pre_ct_mr --help``."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Outputs and differences from the original: "
        "see the docstring of data_tools/pre_ct_mr.py.",
    )
    source = parser.add_argument_group("input (either --nnunet, or --images and --labels)")
    source.add_argument("--nnunet", type=Path, help="nnU-Net raw dataset folder")
    source.add_argument("--images", type=Path, help="folder of <case>_0000.nii.gz images")
    source.add_argument("--labels", type=Path, help="folder of <case>.nii.gz labels")
    source.add_argument("--dataset_json", type=Path, help="dataset.json for class names")
    parser.add_argument("--output", type=Path, required=True, help="output folder OUT")
    parser.add_argument("--modality", choices=["CT", "MR"], help="default: from dataset.json, CT")
    parser.add_argument("--window", choices=sorted(WINDOWS), help="CT window preset (abdomen)")
    parser.add_argument("--window_level", type=float, help="CT window level in HU")
    parser.add_argument("--window_width", type=float, help="CT window width in HU")
    parser.add_argument("--image_size", type=int, default=1024, help="slice side (1024)")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--min_size_3d", type=int, default=1000, help="3D components (1000)")
    parser.add_argument("--min_size_2d", type=int, default=100, help="2D components (100)")
    parser.add_argument("--remap", help='label remapping, e.g. "12:0,13:1"')
    parser.add_argument("--prefix", help="prefix of output names (default: the modality)")
    parser.add_argument("--file_ending", help="NIfTI file ending (default .nii.gz)")
    parser.add_argument("--workers", type=int, help="processes (default: all cores)")
    parser.add_argument("--overwrite", action="store_true", help="redo finished cases")
    args = vars(parser.parse_args(argv))
    try:
        summary = preprocess(**args)
    except SegfmError as e:
        sys.exit(f"error: {e}")
    except ValueError as e:
        parser.error(str(e))
    done = f"{len(summary.written)} cases written, {len(summary.skipped)} already done"
    print(f"{done}: {args['output']}")


if __name__ == "__main__":
    main()
