"""Checks of an anatomical-embedding index (:mod:`segfm.data.io.embedding_volumes`)."""

from __future__ import annotations

from pathlib import Path

from segfm.data.io.checks import Report, check_image, check_spacing, progress
from segfm.data.io.embedding_volumes import read_index, read_prepared
from segfm.transforms.intensity import Window


def check_embedding_root(
    report: Report,
    root: Path,
    index_csvs: list[str],
    pairs: bool = False,
    intensity: Window = "auto",
    max_cases: int | None = None,
) -> None:
    """Check the index CSVs and read every listed volume with its body mask and labels.

    Args:
        report: Where problems go.
        root: The data folder.
        index_csvs: The index CSVs, relative to ``root`` (duplicates are checked once).
        pairs: The CSVs list CT-MR pairs (columns ``ct`` and ``mr``).
        intensity: How volumes are normalised (as the data module reads them).
        max_cases: Read at most this many volumes per CSV.
    """
    for index_csv in dict.fromkeys(index_csvs):
        rows = report.attempt(root / index_csv, read_index, root, index_csv, pairs) or []
        for row in progress(rows, max_cases, index_csv):
            report.checked += 1
            others = [p for p in (row.mask, row.label) if p is not None]
            volume = report.attempt(row.image, read_prepared, row, intensity, also=others)
            if volume is not None:
                check_image(report, row.image, volume.image)
                check_spacing(report, row.image, volume.spacing)
