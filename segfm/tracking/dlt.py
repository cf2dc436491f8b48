"""DeepLesion lesion tracking (DLT/DLS): the pairs file and the tracking metrics.

The pairs file is JimmyCai91/DLT's ``data/test.json`` (``train.json``, ``valid.json`` alike): an
object ``{"0001": pair, ...}`` where a pair has ``source`` / ``target`` (volume file names,
``PatientID_StudyID_ScanID_FirstSlice-LastSlice.nii.gz``), ``source box`` / ``target box``
(``[xmin, ymin, zmin, width, height, depth]``), ``source center`` / ``target center``
(``[x, y, z]``), ``source spacing`` / ``target spacing`` (``[x, y, z]`` mm) and
``target recist diameter`` (``[long, short]``, in **pixels** although DLT's README says mm:
the RECIST end points 24 px apart give 24.0; DLT's ``evaluation.py`` multiplies by the spacing).

Coordinates are voxels of the volumes written by DeepLesion's ``DL_save_nifti.py``: ``x`` is the
PNG column, ``y`` the PNG row, ``z`` the slice counted from the first slice of the sub-volume.
That script stores the array as ``[row, column, slice]`` (so NIfTI ``i, j, k = y, x, z``) with
the affine ``[[0, -sy, 0], [-sx, 0, 0], [0, 0, -sz]]``: the slice axis points to the feet.
**The z flip** of the original SAM evaluation script (``z -> K - 1 - z`` for centres and
``z -> K - z`` for the half-open box ends, ``K`` slices) exists because its preprocessing
reorients volumes to LPS+, which reverses exactly that axis (x and y already point to L and P).
segfm maps points through world millimetres instead (:func:`dlt_to_world`), so no flip is needed
and any preprocessing (reorientation, resampling) of the embedded volumes is undone exactly.

Metrics (:func:`summarise`), both conventions:

* ``cpm_box``: the prediction lies inside the target 3D box (TLT's convention, used by the SAM
  papers and seed 001: 928/960 = 0.9667 for SAM++). Voxel ``c`` covers ``[c - 0.5, c + 0.5)``,
  the box covers ``[min, min + size)`` in the same corner coordinates, so the test is
  ``min <= c + 0.5 < min + size`` on every axis.
* ``cpm_radius``: the error is ``< `` the target lesion radius ``max(recist diameter) / 2 *
  spacing_x`` (DLT's ``evaluation.py``).
* ``cpm_10mm``: error ``<= 10`` mm (seed 001); ``cpm_10mm_dlt``: error ``<= min(radius, 10)``
  mm (DLT's ``evaluation.py``).
* ``med``: mean (and std) Euclidean error in mm; ``med_x``, ``med_y``, ``med_z`` per axis.

Errors are ``|prediction - centre| * spacing`` per axis in the target's voxels, as DLT. The
original SAM script measured them on its 2 mm grid against ``centre * ratio`` while shifting the
prediction by ``+0.5`` voxel, a half-voxel (1 mm per axis) bias that segfm does not copy.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from segfm.errors import DataError

_FIELDS = (
    "source",
    "target",
    "source center",
    "target center",
    "source box",
    "target box",
    "source spacing",
    "target spacing",
    "target recist diameter",
)


@dataclass(frozen=True)
class LesionPair:
    """One lesion tracking pair of the DLT pairs file.

    Attributes:
        pair_id: The key in the file (``"0001"``).
        source: Source volume file name.
        target: Target volume file name.
        source_center: ``[3]`` ``(x, y, z)`` voxel of the source lesion centre.
        target_center: ``[3]`` ``(x, y, z)`` voxel of the target lesion centre.
        source_box: ``[6]`` ``xmin, ymin, zmin, width, height, depth`` in the source.
        target_box: ``[6]`` the same in the target.
        source_spacing: ``[3]`` ``(x, y, z)`` mm.
        target_spacing: ``[3]`` ``(x, y, z)`` mm.
        target_radius_mm: ``max(target recist diameter) / 2 * target_spacing[0]``.
    """

    pair_id: str
    source: str
    target: str
    source_center: np.ndarray
    target_center: np.ndarray
    source_box: np.ndarray
    target_box: np.ndarray
    source_spacing: np.ndarray
    target_spacing: np.ndarray
    target_radius_mm: float


def volume_id(name: str) -> str:
    """A volume's name without ``.nii.gz`` / ``.nii`` (the embedding file is ``<id>.h5``)."""
    return name.removesuffix(".gz").removesuffix(".nii")


def read_dlt_pairs(path: str | os.PathLike[str]) -> list[LesionPair]:
    """Read a DLT pairs file (``test.json``).

    Args:
        path: The JSON file.

    Returns:
        The pairs in file order.

    Raises:
        DataError: If the file is missing, not JSON, or a pair lacks a field or has a wrong size.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        msg = f"{path} does not exist; pass DLT's data/test.json as --pairs"
        raise DataError(msg) from None
    except (OSError, ValueError) as e:
        msg = f"cannot read {path} as JSON ({e}); pass DLT's data/test.json as --pairs"
        raise DataError(msg) from e
    if not isinstance(data, dict) or not data:
        msg = f"{path} is not a non-empty object of pairs {{'0001': {{...}}, ...}}"
        raise DataError(msg)
    pairs = []
    for key, entry in data.items():
        missing = [f for f in _FIELDS if not isinstance(entry, dict) or f not in entry]
        if missing:
            msg = f"{path}: pair {key} lacks {missing}; every pair needs {list(_FIELDS)}"
            raise DataError(msg)
        try:
            arrays = {f: np.asarray(entry[f], dtype=np.float64) for f in _FIELDS[2:]}
        except (TypeError, ValueError) as e:
            msg = f"{path}: pair {key} has a non-numeric box, centre, spacing or diameter ({e})"
            raise DataError(msg) from e
        sizes = [3, 3, 6, 6, 3, 3]
        for field, size in zip(_FIELDS[2:8], sizes, strict=True):
            if arrays[field].shape != (size,):
                got = arrays[field].size
                msg = f"{path}: pair {key} field {field!r} has {got} numbers, not {size}"
                raise DataError(msg)
        radius = float(np.max(arrays["target recist diameter"])) / 2 * arrays["target spacing"][0]
        pairs.append(
            LesionPair(
                pair_id=str(key),
                source=str(entry["source"]),
                target=str(entry["target"]),
                source_center=arrays["source center"],
                target_center=arrays["target center"],
                source_box=arrays["source box"],
                target_box=arrays["target box"],
                source_spacing=arrays["source spacing"],
                target_spacing=arrays["target spacing"],
                target_radius_mm=radius,
            )
        )
    return pairs


def dlt_nifti_affine(spacing_xyz: np.ndarray) -> np.ndarray:
    """The NIfTI affine ``DL_save_nifti.py`` writes (array ``[row, column, slice]``).

    Args:
        spacing_xyz: ``(x, y, z)`` spacing in mm of the pair file.

    Returns:
        float64 ``(4, 4)`` map of NIfTI ``(i, j, k) = (y, x, z)`` to RAS+ world mm.
    """
    sx, sy, sz = (float(v) for v in spacing_xyz)
    return np.array([[0, -sy, 0, 0], [-sx, 0, 0, 0], [0, 0, -sz, 0], [0, 0, 0, 1.0]])


def dlt_to_world(points_xyz: np.ndarray, nifti_affine: np.ndarray) -> np.ndarray:
    """World mm of DLT voxel points ``[N, 3]`` ``(x, y, z)`` through a DeepLesion NIfTI affine."""
    p = np.asarray(points_xyz, dtype=np.float64).reshape(-1, 3)[:, [1, 0, 2]]  # (i, j, k)
    return p @ nifti_affine[:3, :3].T + nifti_affine[:3, 3]


def world_to_dlt(points_world: np.ndarray, nifti_affine: np.ndarray) -> np.ndarray:
    """DLT voxel points ``[N, 3]`` ``(x, y, z)`` of world points (inverse of dlt_to_world)."""
    p = np.asarray(points_world, dtype=np.float64).reshape(-1, 3)
    ijk = np.linalg.solve(nifti_affine[:3, :3], (p - nifti_affine[:3, 3]).T).T
    return ijk[:, [1, 0, 2]]


def score_pair(pair: LesionPair, prediction_xyz: np.ndarray) -> dict[str, Any]:
    """Errors and hits of one prediction (``(x, y, z)`` voxel of the target), both conventions.

    Args:
        pair: The ground truth.
        prediction_xyz: ``[3]`` predicted target voxel.

    Returns:
        ``error_mm``, ``error_x/y/z`` (mm), ``radius_mm``, ``in_box``, ``within_radius``,
        ``within_10mm``, ``within_10mm_dlt``.
    """
    pred = np.asarray(prediction_xyz, dtype=np.float64).reshape(3)
    axes = np.abs(pred - pair.target_center) * pair.target_spacing
    error = float(np.sqrt(np.sum(axes**2)))
    lo, size = pair.target_box[:3], pair.target_box[3:]
    corner = pred + 0.5
    radius = pair.target_radius_mm
    return {
        "error_mm": error,
        "error_x": float(axes[0]),
        "error_y": float(axes[1]),
        "error_z": float(axes[2]),
        "radius_mm": radius,
        "in_box": bool(np.all((lo <= corner) & (corner < lo + size))),
        "within_radius": error < max(radius, 1e-3),
        "within_10mm": error <= 10.0,
        "within_10mm_dlt": error <= min(radius, 10.0),
    }


def _mean_std(values: list[float]) -> dict[str, float]:
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return {"mean": math.nan, "std": math.nan}
    return {"mean": float(arr.mean()), "std": float(arr.std())}


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Aggregate :func:`score_pair` rows into CPM and MED (std as numpy's, ddof 0, as both).

    Args:
        rows: One dict per pair.

    Returns:
        ``pairs``, ``cpm_box``, ``cpm_radius``, ``cpm_10mm``, ``cpm_10mm_dlt`` (fractions),
        ``hits_box``, ``hits_10mm`` (counts) and ``med``, ``med_x``, ``med_y``, ``med_z``
        (``{"mean", "std"}`` in mm).
    """
    n = len(rows)

    def frac(key: str) -> float:
        return sum(bool(r[key]) for r in rows) / n if n else math.nan

    return {
        "pairs": n,
        "cpm_box": frac("in_box"),
        "cpm_radius": frac("within_radius"),
        "cpm_10mm": frac("within_10mm"),
        "cpm_10mm_dlt": frac("within_10mm_dlt"),
        "hits_box": sum(bool(r["in_box"]) for r in rows),
        "hits_10mm": sum(bool(r["within_10mm"]) for r in rows),
        "med": _mean_std([r["error_mm"] for r in rows]),
        "med_x": _mean_std([r["error_x"] for r in rows]),
        "med_y": _mean_std([r["error_y"] for r in rows]),
        "med_z": _mean_std([r["error_z"] for r in rows]),
    }


def markdown_table(summary: dict[str, Any]) -> str:
    """The summary as a markdown table: one row per convention, MED columns shared."""

    def ms(key: str) -> str:
        return f"{summary[key]['mean']:.3f} ± {summary[key]['std']:.3f}"

    head = "| convention | CPM@Radius | CPM@10mm | MED (mm) | MED x | MED y | MED z |\n"
    head += "| --- | --- | --- | --- | --- | --- | --- |\n"
    med = f"{ms('med')} | {ms('med_x')} | {ms('med_y')} | {ms('med_z')}"
    box = f"| inside box, error ≤ 10 mm (TLT, SAM papers) | {summary['cpm_box']:.4f} | "
    box += f"{summary['cpm_10mm']:.4f} | {med} |\n"
    dlt = (
        f"| error < radius, ≤ min(radius, 10 mm) (DLT evaluation.py) | {summary['cpm_radius']:.4f}"
    )
    dlt += f" | {summary['cpm_10mm_dlt']:.4f} | {med} |\n"
    return head + box + dlt
