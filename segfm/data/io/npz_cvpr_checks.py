"""Checks of a CVPR 2025 npz root (:mod:`segfm.data.io.npz_cvpr`) for ``verify-data``.

Besides the arrays: every dataset folder and every label id has text prompts, and an instance
dataset has exactly one class.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from segfm.data.io import npz_cvpr as npz_io
from segfm.data.io.checks import (
    Report,
    check_image,
    check_label,
    check_spacing,
    progress,
    visible_files,
)
from segfm.data.io.json_file import read_json


def _npz_entries(
    report: Report, root: Path
) -> tuple[set[str], dict[str, npz_io.DatasetEntry]] | None:
    """The dataset names of ``class_prompts.json`` and its well-formed entries.

    Returns:
        ``None`` if the file is unreadable.
    """
    path = root / npz_io.CLASS_PROMPTS
    fix = 'write it as {"<DATASET>": {"1": [prompts], "instance_label": 0}}'
    content = report.attempt(path, read_json, path, fix)
    if content is None:
        return None
    if not content:
        report.error(path, "lists no dataset", "add one entry per dataset folder")
    entries = {}
    for name, value in content.items():
        entry = report.attempt(path, npz_io.parse_dataset_entry, name, value, path)
        if entry is not None:
            entries[name] = entry
    return set(content), entries


def _npz_case(
    report: Report,
    case: npz_io.NpzCase,
    entry: npz_io.DatasetEntry | None,
    prompts: Path,
    training: bool,
) -> None:
    """Read one case (image, label, spacing) and check its label ids against its prompts."""
    masks = [case.mask or case.path]
    if report.attempt(case.path, npz_io.inspect_case, case, training, also=masks) is None:
        return
    volume = report.attempt(case.path, npz_io.read_case, case, also=masks)
    if volume is None:
        return
    assert volume.image is not None  # read_case reads it
    check_image(report, case.path, volume.image)
    check_spacing(report, case.path, volume.spacing)
    label_file = case.mask or case.path
    if volume.label is None:
        if not training:
            report.warn(
                case.path,
                f"has no ground truth {case.path.parent.with_name('test_mask') / case.path.name}",
                "add it to score the case (predict works without)",
            )
        return
    ids = check_label(report, label_file, volume.label, None)
    if ids is not None and entry is not None:
        report.attempt(
            label_file, npz_io.check_label_ids, ids, label_file, case.dataset, entry, prompts
        )


def _npz_orphan_masks(report: Report, root: Path, datasets: Iterable[str]) -> None:
    """Warnings for evaluation masks without their image."""
    for folder in [root, *(root / d for d in datasets)]:
        images = visible_files(folder / npz_io.EVAL_IMAGES, ".npz")
        for stem, path in visible_files(folder / npz_io.EVAL_MASKS, ".npz").items():
            if stem not in images:
                report.warn(path, "has no image in test/", "add the image or remove the mask")


def check_npz_root(
    report: Report, root: Path, datasets: list[str] | None = None, max_cases: int | None = None
) -> None:
    """Check a CVPR 2025 npz root (``class_prompts.json``, ``<DATASET>/train``, ``test``, ...)."""
    found = _npz_entries(report, root)
    listed, entries = (None, {}) if found is None else found
    prompts = root / npz_io.CLASS_PROMPTS
    folders = report.attempt(root, npz_io.dataset_folders, root) or []
    for name in folders:
        if listed is not None and name not in listed:
            report.error(
                root / name,
                f"has no entry in {prompts}",
                'add one ({"1": [prompts], "instance_label": 0}) or move the folder out',
            )
    for name in datasets or []:
        if listed is not None and name not in listed:
            report.error(prompts, f"has no entry for the dataset {name!r}", "add one or drop it")
    selected = sorted(datasets or set(folders) | set(listed or ()))
    training = npz_io.find_training_cases(root, selected)
    evaluation = report.attempt(
        root, npz_io.find_evaluation_cases, root, selected, sorted(listed or selected)
    )
    if not training and not evaluation:
        report.error(root, "holds no <DATASET>/train or test npz", "check the folder")
    for case in progress(training, max_cases, "training cases"):
        report.checked += 1
        _npz_case(report, case, entries.get(case.dataset), prompts, training=True)
    for case in progress(evaluation or [], max_cases, "evaluation cases"):
        report.checked += 1
        _npz_case(report, case, entries.get(case.dataset), prompts, training=False)
    _npz_orphan_masks(report, root, selected)
