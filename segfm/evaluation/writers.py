"""Writing predicted label volumes where the input came from, in the input's own format."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from segfm.data.io.atomic import check_not_input
from segfm.data.io.geometry import resample_nearest
from segfm.data.io.nifti import write_nifti
from segfm.data.io.npz_cvpr import write_prediction_npz


def write_prediction(
    folder: str | Path,
    case_id: str,
    seg: np.ndarray,
    meta: dict[str, Any],
    spacing: Sequence[float],
    all_segs: list[np.ndarray] | None = None,
) -> Path:
    """Write one predicted label volume ``[D, H, W]``.

    npz inputs (``meta["file_name"]`` ends with ``.npz``) give ``<folder>/<file_name>`` with
    ``segs`` (and ``all_segs``), the CVPR 2025 submission layout. Everything else gives
    ``<folder>/<case_id>.nii.gz``: resampled back onto the source grid when the sample says where
    it came from (``affine``, ``source_affine``, ``source_shape``), with the source affine.

    Args:
        folder: Output folder.
        case_id: Case name (may contain ``/``: sub-folders are created).
        seg: Label map on the sample's grid.
        meta: The sample's ``meta``.
        spacing: Voxel size ``(z, y, x)``, used when no affine is known.
        all_segs: Intermediate predictions (interactive protocol), npz output only.

    Returns:
        The file written.

    Raises:
        DataError: If the file would overwrite one of the sample's input files.
    """
    folder = Path(folder)
    name = str(meta.get("file_name") or "")
    seg = np.asarray(seg)
    inputs = [meta.get("source"), meta.get("path"), meta.get("label_source")]
    if name.endswith(".npz"):
        path = folder / name
        check_not_input(path, inputs)
        write_prediction_npz(path, seg.astype(np.int64), all_segs)
        return path
    affine = meta.get("affine")
    if affine is None:  # no grid known: voxel size only, (x, y, z) order
        affine = np.diag([*reversed([float(s) for s in spacing]), 1.0])
    affine = np.asarray(affine, dtype=np.float64)
    if meta.get("source_affine") is not None and meta.get("source_shape") is not None:
        seg = resample_nearest(
            seg, affine, np.asarray(meta["source_affine"]), tuple(meta["source_shape"])
        )
        affine = np.asarray(meta["source_affine"], dtype=np.float64)
    path = folder / f"{case_id}.nii.gz"
    check_not_input(path, inputs)
    write_nifti(path, seg.astype(np.int64), affine)
    return path
