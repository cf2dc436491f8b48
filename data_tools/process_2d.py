"""BiomedParse v2's ``process_2D.py``: npz volumes to the 2.5D PNG slices it trains on.

``python -m data_tools.process_2d --data DATA --datasets DS1,DS2`` reads
``DATA/class_prompts.json`` and ``DATA/<DS>/train/*.npz`` (``imgs``, ``gts``, ``spacing``) and
writes, in the original's layout::

    DATA/<DS>/processed/train/<stem>_<iii>.png             slice i of axis 0 and its neighbours:
                                                           RGB, 8 bit, size x size
    DATA/<DS>/processed/train_mask/<stem>_<iii>.png        its label ids, nearest-resized
    DATA/<DS>/processed/train.json                         {"class_prompts": <DS entry>,
                                                            "annotations": [{file_name, mask_file,
                                                            split, class_ids, instance_label}]}
    DATA/<DS>/processed_view<k>/...                        the same for axis k (1 or 2), names
                                                           <stem>_view<k>_<iii>.png

Every slice is written, empty ones too. The axes of a volume are those of
:func:`segfm.transforms.encoding25d.multi_view_axes` (one axis, or all three for isotropic
near-cubic volumes), the encoding that of :mod:`segfm.transforms.encoding25d` (tool path), so
``NpzDataModule(mode="slices25d")`` encodes identical slices on the fly.
``class_ids`` are the ids present in the slice (``[1]`` if any foreground in an instance dataset).

Image PNGs hold their channels in the byte order of the original's ``cv2.imwrite``: reading one
with OpenCV (as the original loader does) gives ``[i, i-1, i+1]``; Pillow shows them reversed.
Differences from the original, on purpose:

* Label ids are not cast to uint8 (which wrapped instance ids above 255): masks of a volume with
  ids above 255 are written as 16-bit PNGs (Pillow mode ``I;16``), others as 8-bit.
* Bicubic resizing is torch's, within one grey level of cv2's on < 0.01 % of the pixels.
* All cores, a progress bar, atomic writes; a finished volume (its record
  ``processed/.done/<stem>.json``, written after its PNGs) is skipped when the tool runs again.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from data_tools.parallel import run_jobs
from segfm.data.io.atomic import atomic_path, remove_temporaries, reported_write, save_json
from segfm.data.io.json_file import read_json
from segfm.data.io.npz_cvpr import (
    CLASS_PROMPTS,
    DatasetEntry,
    NpzCase,
    check_label_ids,
    find_training_cases,
    read_case,
    read_class_prompts,
)
from segfm.errors import DataError, SegfmError
from segfm.transforms.encoding25d import (
    multi_view_axes,
    neighbour_indices,
    plan,
    resample_image,
    resample_label,
)

PROCESSED = "processed"
DONE = ".done"
_CHUNK = 32  # slices resized at once (bounds the memory of one worker)


@dataclass(frozen=True)
class Summary:
    """What a run did: volumes (``<DS>/<stem>``) written and those already done."""

    written: list[str]
    skipped: list[str]


def view_folder(root: Path, dataset: str, axis: int) -> Path:
    """``<DS>/processed`` for axis 0, ``<DS>/processed_view<k>`` for axis ``k``."""
    return root / dataset / (PROCESSED if axis == 0 else f"{PROCESSED}_view{axis}")


def slice_name(stem: str, axis: int, index: int) -> str:
    """``<stem>_<iii>.png`` (axis 0) or ``<stem>_view<k>_<iii>.png``."""
    view = "" if axis == 0 else f"_view{axis}"
    return f"{stem}{view}_{index:03d}.png"


def save_png(path: Path, array: np.ndarray) -> None:
    """Write an 8-bit RGB or grey, or 16-bit grey PNG atomically."""
    with reported_write(path), atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


def mask_dtype(high: int, path: Path) -> type[np.unsignedinteger]:
    """uint8 for ids up to 255, else uint16 (16-bit PNG)."""
    if high > np.iinfo(np.uint16).max:
        msg = f"{path} holds label id {high}, more than a 16-bit PNG stores; relabel it"
        raise DataError(msg)
    return np.uint8 if high <= np.iinfo(np.uint8).max else np.uint16


def _class_ids(mask: np.ndarray, instance: bool) -> list[int]:
    """Ids present in a slice (``[1]`` for any foreground of an instance dataset)."""
    if instance:
        return [1] if mask.any() else []
    return [int(i) for i in np.unique(mask) if i != 0]


Annotations = list[dict[str, Any]]


def _write_view(
    case: NpzCase, image: np.ndarray, label: np.ndarray, axis: int, size: int, instance: bool
) -> Annotations:
    """Write the slices of one axis; return their annotations."""
    geometry = plan(image.shape, size, axis)
    n = geometry.num_slices
    image = np.concatenate(
        [
            resample_image(image, geometry, range(s, min(s + _CHUNK, n))).numpy()
            for s in range(0, n, _CHUNK)
        ]
    ).astype(np.uint8)  # [N, S, S], values already rounded and clipped
    folder = view_folder(case.path.parents[2], case.dataset, axis)  # <root>/<DS>/train/x.npz
    dtype = mask_dtype(int(label.max()), case.path)
    annotations = []
    for start in range(0, n, _CHUNK):
        chunk = range(start, min(start + _CHUNK, n))
        masks = resample_label(label, geometry, chunk).numpy()
        for i, mask in zip(chunk, masks, strict=True):
            name = slice_name(case.path.stem, axis, i)
            rgb = image[neighbour_indices(n)[i]].transpose(1, 2, 0)  # [S, S, (i, i-1, i+1)]
            save_png(folder / "train" / name, np.ascontiguousarray(rgb[..., ::-1]))  # cv2 order
            save_png(folder / "train_mask" / name, mask.astype(dtype))
            annotations.append(
                {
                    "file_name": name,
                    "mask_file": name,
                    "split": "train",
                    "class_ids": _class_ids(mask, instance),
                    "instance_label": int(instance),
                }
            )
    return annotations


def _record(case: NpzCase) -> Path:
    """The record that marks a volume as done."""
    return case.path.parents[1] / PROCESSED / DONE / f"{case.path.stem}.json"


def process_case(
    case: NpzCase, entry: DatasetEntry, prompts_file: Path, size: int, overwrite: bool
) -> tuple[bool, dict[int, Annotations]]:
    """Write every slice of one volume (all its views) unless its record says it is done.

    Args:
        case: The training volume.
        entry: Its dataset's entry of ``class_prompts.json``.
        prompts_file: ``class_prompts.json`` (named in errors).
        size: Side of the slices.
        overwrite: Redo a finished volume.

    Returns:
        ``(written, {axis: annotations})``.
    """
    record = _record(case)
    if record.exists() and not overwrite:
        done = read_json(record, f"delete {record} and run again")
        if done.get("size") == size:
            return False, {int(k): v for k, v in done["views"].items()}
    data = read_case(case)
    if data.image is None or data.label is None:
        msg = f"{case.path} has no 'gts' array; training volumes need their labels"
        raise DataError(msg)
    check_label_ids(np.unique(data.label).tolist(), case.path, case.dataset, entry, prompts_file)
    views = {
        axis: _write_view(case, data.image, data.label, axis, size, entry.instance)
        for axis in multi_view_axes(data.image.shape, data.spacing)
    }
    save_json(record, {"size": size, "views": {str(k): v for k, v in views.items()}})
    return True, views


_Job = tuple[NpzCase, DatasetEntry, Path, int, bool]
_Result = tuple[NpzCase, bool, dict[int, Annotations]]


def _run(job: _Job) -> _Result:
    """Pool entry point."""
    written, views = process_case(*job)
    return job[0], written, views


def process(
    data: str | os.PathLike[str],
    datasets: Iterable[str] | None = None,
    size: int = 512,
    workers: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Summary:
    """Write the ``processed`` folders of datasets (see the module docstring).

    Args:
        data: Folder with ``class_prompts.json`` and ``<DS>/train/*.npz``.
        datasets: Dataset names; ``None`` takes every entry of ``class_prompts.json``.
        size: Side of the slices.
        workers: Processes (default: all cores); 0 or 1 runs in this process.
        overwrite: Redo finished volumes.
        progress: Show a progress bar.

    Returns:
        The volumes written and skipped.

    Raises:
        ValueError: If ``size`` < 1.
        DataError: If a dataset is unknown or has no volume, or a file is bad.
    """
    if size < 1:
        msg = f"size must be >= 1, got {size}"
        raise ValueError(msg)
    root = Path(data)
    prompts_file = root / CLASS_PROMPTS
    entries = read_class_prompts(prompts_file)
    names = sorted(entries) if datasets is None else list(dict.fromkeys(datasets))
    for name in names:
        if name not in entries:
            msg = f"dataset {name!r} has no entry in {prompts_file}; add one or drop it"
            raise DataError(msg)
    cases = find_training_cases(root, names)
    for name in names:
        if not any(c.dataset == name for c in cases):
            msg = f"{root / name / 'train'} holds no .npz volume; check --data and --datasets"
            raise DataError(msg)
    jobs = [(c, entries[c.dataset], prompts_file, size, overwrite) for c in cases]
    summary = Summary([], [])
    views: dict[tuple[str, int], Annotations] = {}
    raw = read_json(prompts_file, 'write it as {"<DATASET>": {"1": [prompts], ...}}')
    try:
        for case, written, done in run_jobs(_run, jobs, workers, progress=progress):
            (summary.written if written else summary.skipped).append(case.case_id)
            for axis, annotations in done.items():
                views.setdefault((case.dataset, axis), []).extend(annotations)
    finally:
        for name in names:
            for axis in (0, 1, 2):
                for sub in ("train", "train_mask", DONE, ""):
                    remove_temporaries(view_folder(root, name, axis) / sub)
    for (name, axis), annotations in sorted(views.items()):
        annotations.sort(key=lambda a: a["file_name"])
        content = {"class_prompts": raw[name], "annotations": annotations}
        save_json(view_folder(root, name, axis) / "train.json", content)
    summary.written.sort()
    summary.skipped.sort()
    return summary


def main(argv: list[str] | None = None) -> None:
    """Command line; see ``python -m data_tools.process_2d --help``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="folder of class_prompts.json")
    parser.add_argument("--datasets", help="comma-separated names (default: all of the json)")
    parser.add_argument("--size", type=int, default=512, help="side of the slices (512)")
    parser.add_argument("--workers", type=int, help="processes (default: all cores)")
    parser.add_argument("--overwrite", action="store_true", help="redo finished volumes")
    args = parser.parse_args(argv)
    names = None if args.datasets is None else [n for n in args.datasets.split(",") if n]
    try:
        summary = process(args.data, names, args.size, args.workers, args.overwrite)
    except SegfmError as e:
        sys.exit(f"error: {e}")
    except ValueError as e:
        parser.error(str(e))
    print(f"{len(summary.written)} volumes written, {len(summary.skipped)} already done")


if __name__ == "__main__":
    main()
