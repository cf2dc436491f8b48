"""Checks of the 2.5D slice PNGs of ``data_tools.process_2d`` (:mod:`segfm.data.io.png_slices`)."""

from __future__ import annotations

from pathlib import Path

from segfm.data.io.checks import Report, progress
from segfm.data.io.npz_cvpr import dataset_folders
from segfm.data.io.png_slices import list_processed, mask_of, read_png


def check_png_slices(
    report: Report,
    root: Path,
    datasets: list[str] | None,
    size: int,
    max_cases: int | None = None,
) -> None:
    """Check every ``processed*/train.json`` and read every PNG it lists, with its mask.

    Args:
        report: Where problems go.
        root: The npz root the PNGs were written into.
        datasets: The dataset folders; ``None`` takes every one of the root.
        size: The side every PNG must have.
        max_cases: Read the PNGs of at most this many volumes per dataset.
    """
    names = datasets if datasets is not None else report.attempt(root, dataset_folders, root)
    for name in sorted(set(names or [])):
        listed = report.attempt(root / name, list_processed, root, name) or {}
        for case_id in progress(sorted(listed), max_cases, f"{name} PNGs"):
            for png, _, _ in listed[case_id]:
                report.attempt(png, read_png, png, True, size)
                report.attempt(mask_of(png), read_png, mask_of(png), False, size)
