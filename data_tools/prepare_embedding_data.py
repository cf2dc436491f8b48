"""Prepare volumes for anatomical-embedding training (SAM, SAM++, Cross-SAM).

Replaces the original's three ``misc/`` scripts::

    python -m data_tools.prepare_embedding_data intra --input NIFTI_DIR --output ROOT
    python -m data_tools.prepare_embedding_data merge-labels --input TOTALSEG_DIR --output ROOT
    python -m data_tools.prepare_embedding_data ct-mr --input PATIENTS_DIR --output ROOT

``intra`` (``lymphnode_preprocess_crop_multi_process.py``): every ``*.nii[.gz]`` of ``--input``
is reoriented to LPS+ voxel axes (no interpolation), given a body mask (HU > ``--threshold``,
-900, then per axial slice closing and opening with a radius-3 disk, objects under 2000 px
removed, holes under 40000 px filled, as the original's ``RemoveCTBed``), cropped to the mask's
box (``--no-crop`` keeps the field of view: the original had this step commented out) and
resampled to ``--spacing`` mm cubes (1.6, the original's; trilinear image, nearest mask). Writes
``ROOT/images/<case>.nii.gz``, ``ROOT/images/<case>_mask.nii.gz`` and the index ``ROOT/<--index>``
(header ``name,mask``, paths relative to ROOT). The original wrote
``lymphnode_abd_filename.csv`` while its configs read ``lymphnode_filename.csv``; the index name
is an option whose default is the one the configs read.

``merge-labels`` (``merge_mask_label_multi_process.py``): TotalSegmentator layout,
``<case>/ct.nii.gz`` and ``<case>/segmentations/<organ>.nii.gz``; the organ masks become one label
map, organ ``i`` of the list (``--organs`` file, JSON list or one name per line; default: the
sorted organ names of the first case) getting ``i + 1``, later organs winning on overlaps as in
the original. Writes images, ``<case>_label.nii.gz``, ``<case>_mask.nii.gz``, ``labels.json``
(``{"1": "adrenal_gland_left", ...}``) and the index (``name,mask,label``). Grids are kept
unless ``--spacing`` is given.

``ct-mr`` (``mri_ct_multi_process.py``): ``<patient>/ct.nii.gz`` and ``<patient>/mr.nii.gz``
(``--ct-name``, ``--mr-name``) are reoriented, resampled to ``--spacing`` (2 mm), clipped (CT
to [-1024, 3071] HU, MR to its p0.2/p99.8 percentiles; the [0, 255] mapping is left to the
data module, so clipping again there changes nothing) and given body masks (CT > -300 HU, MR >
p0.2 + 30, with the 30000 px hole limit of that script). Writes ``ROOT/<patient>/{ct,mr}.nii.gz``
with ``{ct,mr}_mask.nii.gz`` and the index (``name,ct,mr``). For Cross-SAM stage 2 the pairs must
first be aligned (``segfm register``), as the original's ``regis_sam.py`` did.

All cores (``--workers``), a progress bar, atomic writes; a case whose last file exists is
skipped when the tool runs again (``--overwrite`` redoes it). Bad inputs stop the tool with one
line naming the file.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from data_tools.embedding_ops import (
    MAX_HOLE,
    MIN_OBJECT,
    body_mask,
    crop_affine,
    crop_box,
    reorient,
)
from data_tools.parallel import run_jobs
from segfm.data.io.atomic import remove_temporaries, save_json
from segfm.data.io.geometry import isotropic_grid, resample
from segfm.data.io.nifti import read_nifti, write_nifti
from segfm.errors import DataError, SegfmError
from segfm.utils.files import atomic_write_text

CT_CLIP = (-1024.0, 3071.0)
_SUFFIXES = (".nii.gz", ".nii")


def _stem(path: Path) -> str:
    name = path.name
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _to_grid(
    array: np.ndarray, affine: np.ndarray, spacing: float | None, order: int
) -> tuple[np.ndarray, np.ndarray]:
    if spacing is None:
        return array, affine
    new_affine, shape = isotropic_grid(affine, array.shape, spacing)
    outside = float(array.min()) if order else 0.0
    data = array.astype(np.float32) if order else array
    return resample(data, affine, new_affine, shape, order=order, outside=outside), new_affine


@dataclass(frozen=True)
class Options:
    """Settings shared by every case of a run."""

    output: Path
    spacing: float | None
    threshold: float
    crop: bool
    margin: int
    overwrite: bool
    min_object: int = MIN_OBJECT
    max_hole: int = MAX_HOLE
    organs: tuple[str, ...] = ()
    ct_name: str = "ct.nii.gz"
    mr_name: str = "mr.nii.gz"
    segmentations: str = "segmentations"


def _done(paths: Sequence[Path], options: Options) -> bool:
    return not options.overwrite and all(p.is_file() for p in paths)


def _intra(source: Path, options: Options) -> dict[str, str]:
    case = _stem(source)
    image_rel, mask_rel = f"images/{case}.nii.gz", f"images/{case}_mask.nii.gz"
    row = {"name": image_rel, "mask": mask_rel}
    if _done([options.output / image_rel, options.output / mask_rel], options):
        return row
    vol = read_nifti(source)
    array, affine = reorient(vol.array, vol.affine)
    mask = body_mask(
        array, options.threshold, min_object=options.min_object, max_hole=options.max_hole
    )
    if options.crop:
        box = crop_box(mask, options.margin)
        if box is None:
            msg = (
                f"{source}: no voxel above {options.threshold}, so no body to crop to; "
                "check it is a CT in HU, or pass --threshold / --no-crop"
            )
            raise DataError(msg)
        array, mask, affine = array[box], mask[box], crop_affine(affine, box)
    image, new_affine = _to_grid(array, affine, options.spacing, order=1)
    mask, _ = _to_grid(mask.astype(np.uint8), affine, options.spacing, order=0)
    write_nifti(options.output / image_rel, image.astype(np.float32), new_affine)
    write_nifti(options.output / mask_rel, mask.astype(np.uint8), new_affine)  # last: "done"
    return row


def _merge(case_dir: Path, options: Options) -> dict[str, str]:
    case = case_dir.name
    rels = [f"images/{case}.nii.gz", f"images/{case}_mask.nii.gz", f"images/{case}_label.nii.gz"]
    row = dict(zip(("name", "mask", "label"), rels, strict=True))
    if _done([options.output / r for r in rels], options):
        return row
    vol = read_nifti(case_dir / options.ct_name)
    labels = np.zeros(vol.array.shape, np.uint8 if len(options.organs) < 256 else np.uint16)
    for index, organ in enumerate(options.organs, start=1):
        path = case_dir / options.segmentations / f"{organ}.nii.gz"
        organ_mask = read_nifti(path).array
        if organ_mask.shape != labels.shape:
            msg = (
                f"{path} has shape {organ_mask.shape} (z, y, x), the CT {vol.array.shape}; "
                "masks must lie on the CT's grid"
            )
            raise DataError(msg)
        labels[organ_mask > 0] = index
    image, affine = reorient(vol.array, vol.affine)
    labels, _ = reorient(labels, vol.affine)
    mask = body_mask(
        image, options.threshold, min_object=options.min_object, max_hole=options.max_hole
    )
    image_out, new_affine = _to_grid(image, affine, options.spacing, order=1)
    labels, _ = _to_grid(labels, affine, options.spacing, order=0)
    mask, _ = _to_grid(mask.astype(np.uint8), affine, options.spacing, order=0)
    write_nifti(options.output / rels[0], image_out.astype(np.float32), new_affine)
    write_nifti(options.output / rels[1], mask, new_affine)
    write_nifti(options.output / rels[2], labels, new_affine)
    return row


def _ct_mr(patient: Path, options: Options) -> dict[str, str]:
    rels = {k: f"{patient.name}/{k}.nii.gz" for k in ("ct", "mr", "ct_mask", "mr_mask")}
    row = {"name": patient.name, "ct": rels["ct"], "mr": rels["mr"]}
    if _done([options.output / r for r in rels.values()], options):
        return row
    for key, file in (("ct", options.ct_name), ("mr", options.mr_name)):
        vol = read_nifti(patient / file)
        array, affine = reorient(vol.array, vol.affine)
        array, new_affine = _to_grid(array.astype(np.float32), affine, options.spacing, order=1)
        if key == "ct":
            lo, hi = CT_CLIP
            threshold = -300.0
        else:
            lo, hi = (float(v) for v in np.percentile(array, (0.2, 99.8)))
            threshold = lo + 30.0
        array = np.clip(array, lo, hi)
        hole = min(options.max_hole, 30000)  # that script's limit
        mask = body_mask(array, threshold, min_object=options.min_object, max_hole=hole)
        write_nifti(options.output / rels[key], array.astype(np.float32), new_affine)
        write_nifti(options.output / rels[f"{key}_mask"], mask.astype(np.uint8), new_affine)
    return row


def _run_one(job: Path, worker: Callable[[Path, Options], dict[str, str]], options: Options) -> Any:
    try:
        return worker(job, options)
    except SegfmError as e:
        return e  # reported by the parent, after the pool has stopped


def _organs(input_dir: Path, cases: list[Path], organs_file: str | None, sub: str) -> list[str]:
    if organs_file:
        text = Path(organs_file).read_text()
        try:
            names = json.loads(text)
        except ValueError:
            names = [line.strip() for line in text.splitlines() if line.strip()]
        if not isinstance(names, list) or not names:
            msg = f"{organs_file} must be a JSON list of organ names or one name per line"
            raise DataError(msg)
        return [str(n) for n in names]
    folder = cases[0] / sub
    names = sorted(_stem(p) for p in folder.glob("*.nii*")) if folder.is_dir() else []
    if not names:
        msg = f"{folder} holds no <organ>.nii.gz masks; check --input ({input_dir}) or --organs"
        raise DataError(msg)
    return names


def _jobs(args: argparse.Namespace) -> list[Path]:
    folder = Path(args.input)
    if not folder.is_dir():
        msg = f"{folder} does not exist or is not a folder; check --input"
        raise DataError(msg)
    if args.command == "intra":
        jobs = sorted(p for p in folder.iterdir() if p.name.endswith(_SUFFIXES))
        what = "*.nii.gz / *.nii files"
    else:
        jobs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        what = "case folders"
    if not jobs:
        msg = f"{folder} holds no {what}; check --input"
        raise DataError(msg)
    return jobs


def _csv(rows: list[dict[str, str]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def run(args: argparse.Namespace) -> list[dict[str, str]]:
    """Prepare every case of ``args.input`` (see the module docstring).

    Args:
        args: Parsed command line.

    Returns:
        The index rows.

    Raises:
        DataError: On the first bad input (finished cases stay).
    """
    jobs = _jobs(args)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    for sub in {output, output / "images", *(output / j.name for j in jobs)}:
        remove_temporaries(sub)
    organs: tuple[str, ...] = ()
    if args.command == "merge-labels":
        organs = tuple(_organs(Path(args.input), jobs, args.organs, args.segmentations))
        save_json(output / "labels.json", {str(i): n for i, n in enumerate(organs, start=1)})
    default_spacing = {"intra": 1.6, "merge-labels": None, "ct-mr": 2.0}[args.command]
    options = Options(
        output=output,
        spacing=default_spacing if args.spacing is None else (args.spacing or None),
        threshold=args.threshold,
        crop=not args.no_crop,
        margin=args.margin,
        overwrite=args.overwrite,
        min_object=args.min_object,
        max_hole=args.max_hole,
        organs=organs,
        ct_name=args.ct_name,
        mr_name=args.mr_name,
        segmentations=args.segmentations,
    )
    worker = {"intra": _intra, "merge-labels": _merge, "ct-mr": _ct_mr}[args.command]
    work = partial(_run_one, worker=worker, options=options)
    results = list(
        run_jobs(work, jobs, args.workers or None, desc=args.command, progress=None, ordered=True)
    )
    errors = [r for r in results if isinstance(r, Exception)]
    rows = [r for r in results if not isinstance(r, Exception)]
    if rows:
        atomic_write_text(output / args.index, _csv(rows))
    if errors:
        raise errors[0]
    return rows


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m data_tools.prepare_embedding_data")
    subs = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("intra", "single CT scans: body crop, LPS, resample (SAM)"),
        ("merge-labels", "TotalSegmentator organ masks -> one label map (SAM++)"),
        ("ct-mr", "CT-MR pairs of one patient (Cross-SAM)"),
    ):
        sub = subs.add_parser(name, help=help_text)
        sub.add_argument("--input", required=True, help="input folder")
        sub.add_argument("--output", required=True, help="output root folder")
        sub.add_argument(
            "--spacing",
            type=float,
            default=None,
            help="isotropic voxel size in mm (intra 1.6, ct-mr 2.0, merge-labels: keep; 0 keeps)",
        )
        sub.add_argument("--threshold", type=float, default=-900.0, help="body mask HU threshold")
        sub.add_argument("--no-crop", action="store_true", help="intra: keep the field of view")
        sub.add_argument(
            "--min-object", type=int, default=MIN_OBJECT, help="smallest body part (px/slice)"
        )
        sub.add_argument("--max-hole", type=int, default=MAX_HOLE, help="largest hole filled (px)")
        sub.add_argument("--margin", type=int, default=2, help="voxels kept around the body box")
        sub.add_argument(
            "--index",
            default="lymphnode_filename.csv" if name == "intra" else f"{name}_index.csv",
            help="index CSV file name inside --output",
        )
        sub.add_argument("--organs", default=None, help="merge-labels: organ list file")
        sub.add_argument("--segmentations", default="segmentations", help="organ mask folder")
        sub.add_argument("--ct-name", default="ct.nii.gz", help="CT file in each case folder")
        sub.add_argument("--mr-name", default="mr.nii.gz", help="MR file in each patient folder")
        sub.add_argument("--workers", type=int, default=0, help="processes (0: all cores)")
        sub.add_argument("--overwrite", action="store_true", help="redo finished cases")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        rows = run(args)
    except SegfmError as e:
        print(f"prepare_embedding_data: error: {e}", file=sys.stderr)
        return 2
    print(f"prepared {len(rows)} cases into {args.output} (index {args.index})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
