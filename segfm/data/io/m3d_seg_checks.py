"""Checks of an M3D-Seg root (:mod:`segfm.data.io.m3d_seg`) for ``verify-data``."""

from __future__ import annotations

from pathlib import Path

from segfm.data.io.checks import Report, progress
from segfm.data.io.m3d_seg import check_case, dataset_json, read_dataset


def check_m3d_root(
    report: Report, root: Path, codes: list[str], max_cases: int | None = None
) -> None:
    """Check the json of every dataset code, and every case's image and mask (from headers).

    Args:
        report: Where problems go.
        root: The M3D-Seg root.
        codes: The dataset codes (folder names).
        max_cases: Check at most this many cases per code.
    """
    for code in codes:
        dataset = report.attempt(dataset_json(root, code), read_dataset, root, code)
        if dataset is None:
            continue
        cases = dataset.train + dataset.test
        if not cases:
            report.error(
                dataset_json(root, code),
                "lists no train or test case",
                "rebuild the dataset with python -m data_tools.build_dataset",
            )
        for case in progress(cases, max_cases, code):
            report.checked += 1
            report.attempt(case.image, check_case, case, also=[case.mask])
