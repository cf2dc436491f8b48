"""Volumes prepared for anatomical-embedding training, and their CSV index.

``python -m data_tools.prepare_embedding_data`` writes NIfTI volumes (body-cropped, resampled to
about 2 mm) under a root folder and an index CSV with a header. This reader is tolerant:

- column ``name``: an image file relative to the CSV's folder (``intra`` / ``inter`` data); optional
  columns ``mask`` (body mask) and ``label`` (organ label map, SAM++); when absent, the files
  ``<stem>_mask.nii.gz`` and ``<stem>_label.nii.gz`` beside the image are used if they exist;
- columns ``ct`` and ``mr`` (CT-MR pairs of one patient, already aligned in world space): one
  row per patient, each file with optional ``<stem>_mask.nii.gz``.

Arrays are ``[Z, Y, X]``; ``affine`` maps array index ``(z, y, x, 1)`` to world mm (NIfTI RAS+).
Intensities are normalised as the original's ``RescaleIntensity``
(:func:`segfm.transforms.intensity.window_ct_mr`): CT clipped to [-1024, 3071] HU, MR to its
0.2 / 99.8 percentiles, mapped to [0, 255], minus 50.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segfm.data.io.nifti import read_nifti
from segfm.errors import DataError
from segfm.transforms.intensity import Window, window_ct_mr


@dataclass(frozen=True)
class IndexRow:
    """One row of the index: the image(s) of a case, relative to the root."""

    name: str
    image: Path
    mask: Path | None = None
    label: Path | None = None
    modality: str = "auto"


@dataclass
class PreparedVolume:
    """A prepared volume.

    Attributes:
        image: ``[Z, Y, X]`` float32 intensities, normalised.
        affine: ``(4, 4)`` array index ``(z, y, x, 1)`` to world mm (RAS+).
        spacing: ``(z, y, x)`` voxel size in mm.
        mask: ``[Z, Y, X]`` bool body mask, or None.
        label: ``[Z, Y, X]`` int64 organ labels, or None.
        name: Case name.
        path: Image file.
    """

    image: np.ndarray
    affine: np.ndarray
    spacing: np.ndarray
    mask: np.ndarray | None
    label: np.ndarray | None
    name: str
    path: Path


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _beside(image: Path, kind: str) -> Path | None:
    found = image.with_name(f"{_stem(image)}_{kind}.nii.gz")
    return found if found.is_file() else None


def read_index(root: str | os.PathLike[str], index_csv: str, pairs: bool = False) -> list[IndexRow]:
    """Read the index CSV.

    Args:
        root: Data folder.
        index_csv: CSV file relative to ``root`` (or absolute).
        pairs: Read CT-MR rows (columns ``ct`` and ``mr``): two rows per patient are returned,
            CT first, named ``<patient>_ct`` / ``_mr`` after column ``name`` or the row number.

    Returns:
        The rows, with paths resolved against the CSV's folder (``root`` for a CSV at the top).

    Raises:
        DataError: If the CSV is missing, lacks the needed columns, or names missing files.
    """
    root = Path(root)
    path = root / index_csv
    if not path.is_file():
        msg = f"{path}: no index CSV; run data_tools.prepare_embedding_data or set index_csv"
        raise DataError(msg)
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        rows = [r for r in reader if any((v or "").strip() for v in r.values())]
    base = path.parent  # rows are relative to the CSV's folder
    need = ("ct", "mr") if pairs else ("name",)
    if not all(n in fields for n in need):
        msg = f"{path}: needs the header column(s) {list(need)}, found {fields}; fix the header"
        raise DataError(msg)
    out: list[IndexRow] = []
    for i, r in enumerate(rows):
        if pairs:
            patient = (r.get("name") or f"pair{i:04d}").strip()
            for mod in ("ct", "mr"):
                image = base / r[mod].strip()
                out.append(IndexRow(f"{patient}_{mod}", image, _beside(image, "mask"), None, mod))
        else:
            image = base / r["name"].strip()
            mask = (
                base / r["mask"].strip()
                if (r.get("mask") or "").strip()
                else _beside(image, "mask")
            )
            label = (
                base / r["label"].strip()
                if (r.get("label") or "").strip()
                else _beside(image, "label")
            )
            out.append(
                IndexRow(
                    _stem(image), image, mask, label, (r.get("modality") or "auto").strip().lower()
                )
            )
    for row in out:
        for p in (row.image, row.mask, row.label):
            if p is not None and not p.is_file():
                msg = f"{path} lists {p}, which does not exist; fix the row or add the file"
                raise DataError(msg)
    if not out:
        msg = f"{path} lists no volume; add rows under the header"
        raise DataError(msg)
    return out


def read_prepared(row: IndexRow, intensity: Window = "auto") -> PreparedVolume:
    """Read a row's image (normalised), mask and label.

    Raises:
        DataError: If a file is unreadable or the mask / label grid differs from the image's.
    """
    volume = read_nifti(row.image)
    kind: Window = (
        row.modality if row.modality in ("ct", "mr") and intensity == "auto" else intensity
    )  # type: ignore[assignment]
    extra: dict[str, np.ndarray | None] = {"mask": None, "label": None}
    for key, p in (("mask", row.mask), ("label", row.label)):
        if p is None:
            continue
        other = read_nifti(p)
        if other.array.shape != volume.array.shape or not np.allclose(
            other.affine, volume.affine, atol=1e-3
        ):
            msg = f"{p} is not on the grid of {row.image}; resample it onto the image grid"
            raise DataError(msg)
        extra[key] = other.array > 0 if key == "mask" else other.array.astype(np.int64)
    return PreparedVolume(
        image=window_ct_mr(volume.array, kind),
        affine=np.asarray(volume.affine, np.float64)[:, [2, 1, 0, 3]],
        spacing=np.asarray(volume.spacing, np.float64),
        mask=extra["mask"],
        label=extra["label"],
        name=row.name,
        path=row.image,
    )
