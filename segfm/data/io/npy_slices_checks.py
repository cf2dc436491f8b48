"""Checks of a MedSAM npy-slice root (:mod:`segfm.data.io.npy_slices`) for ``verify-data``."""

from __future__ import annotations

import re
from pathlib import Path

from segfm.data.io import npy_slices as npy_io
from segfm.data.io.checks import (
    Report,
    check_label,
    check_spacing,
    progress,
    report_unpaired,
    visible_files,
)

_SLICE = re.compile(r"^(?P<case>.+)-(?P<index>\d+)$")  # npy slices: <case>-NNN.npy
_REDO_NPY = "re-create it with python -m data_tools.pre_ct_mr --overwrite"


def _npy_case_volume(
    report: Report, path: Path, slices: list[tuple[int, Path]], declared: set[int] | None
) -> None:
    """The ``npz/<case>.npz`` volume of a case and its slice indices."""
    volume = report.attempt(path, npy_io.read_volume, path)
    if volume is None:
        return
    check_spacing(report, path, volume.spacing)
    check_label(report, path, volume.label[0], declared, "labels.json")
    depth = volume.image.shape[1]
    for index, file in slices:
        if index >= depth:
            report.error(file, f"is slice {index} but {path} has {depth} slices", _REDO_NPY)


def check_npy_slices_root(report: Report, root: Path, max_cases: int | None = None) -> None:
    """Check a MedSAM npy-slice root (``imgs/``, ``gts/``, ``npz/``, ``labels.json``)."""
    images, labels = visible_files(root / "imgs", ".npy"), visible_files(root / "gts", ".npy")
    for sub in ("imgs", "gts"):
        if not (root / sub).is_dir():
            report.error(root / sub, "is missing", "write the root with data_tools.pre_ct_mr")
    report_unpaired(report, images, labels, f"mask in {root / 'gts'}")
    report_unpaired(report, labels, images, f"image in {root / 'imgs'}")
    names = report.attempt(root / "labels.json", npy_io.read_label_names, root) or {}
    if not (root / "labels.json").exists():
        report.warn(
            root / "labels.json",
            "is missing: classes have no names and label values cannot be checked",
            'write it as {"1": "liver", ...}',
        )
    declared = set(names) | {0} if names else None
    cases: dict[str, list[tuple[int, Path]]] = {}
    for name in sorted(set(images) & set(labels)):
        match = _SLICE.match(name)
        if match is None:
            report.error(images[name], "is not named <case>-NNN.npy", "rename or remove it")
            continue
        cases.setdefault(match["case"], []).append((int(match["index"]), images[name]))
    if (root / "imgs").is_dir() and not images:
        report.error(root / "imgs", "holds no .npy slice", "run python -m data_tools.pre_ct_mr")
    for case in progress(sorted(cases), max_cases, "cases"):
        report.checked += 1
        for _, file in cases[case]:
            files = npy_io.SliceFiles(case, 0, file, root / "gts" / file.name)
            pair = report.attempt(file, npy_io.read_slice, files, also=[files.label])
            if pair is not None:
                check_label(report, files.label, pair[1][0], declared, "labels.json")
        npz = root / "npz" / f"{case}.npz"
        if npz.is_file():
            _npy_case_volume(report, npz, cases[case], declared)
        else:
            report.warn(
                npz,
                f"is missing: case {case} can train but not be tested or predicted",
                _REDO_NPY,
            )
    for stem, path in visible_files(root / "npz", ".npz").items():
        if stem not in cases:
            report.warn(path, "has no slice in imgs/, so it is not used", "write its slices")
