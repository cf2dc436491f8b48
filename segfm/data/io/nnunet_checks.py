"""Checks of an nnU-Net v2 raw dataset (:mod:`segfm.data.io.nnunet`) for ``verify-data``."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from segfm.data.io import nnunet as nnunet_io
from segfm.data.io.checks import (
    Report,
    check_image,
    check_label,
    check_nifti_spacing,
    check_pair,
    progress,
    report_unpaired,
    visible_files,
)
from segfm.data.io.json_file import read_json
from segfm.data.io.nifti import read_nifti

_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")  # nnU-Net: <case>_XXXX<ending>


def _nnunet_declared(meta: dict[str, Any] | None) -> set[int] | None:
    """The label values of ``dataset.json`` (regions give their ids), with background 0."""
    if meta is None:
        return None
    ids = {0}
    for value in meta["labels"].values():
        for i in value if isinstance(value, list) else [value]:
            if isinstance(i, int):
                ids.add(i)
    return ids


def _nnunet_images(report: Report, folder: Path, ending: str) -> dict[str, dict[int, Path]]:
    """Case id to its channel files; misnamed files are errors."""
    cases: dict[str, dict[int, Path]] = {}
    for stem, path in visible_files(folder, ending).items():
        match = _CHANNEL.match(stem)
        if match is None:
            report.error(path, f"is not named <case>_0000{ending}", "rename it (nnU-Net layout)")
            continue
        cases.setdefault(match["case"], {})[int(match["channel"])] = path
    return cases


def _nnunet_case(
    report: Report,
    channels: dict[int, Path],
    label_file: Path | None,
    expected: int,
    declared: set[int] | None,
) -> None:
    """Read the channels and the label of one case and check them together."""
    first = channels[min(channels)]
    for c in sorted(set(range(expected)) - set(channels)):
        name = first.name.replace(f"_{min(channels):04d}", f"_{c:04d}", 1)
        report.error(
            first.parent / name,
            f"is missing: dataset.json declares {expected} channels",
            "add the channel's image, or fix channel_names in dataset.json",
        )
    label = None if label_file is None else report.attempt(label_file, read_nifti, label_file)
    if label is not None:
        check_nifti_spacing(report, label_file, label)
        check_label(report, label_file, label.array, declared, "dataset.json")
    for path in (channels[c] for c in sorted(channels)):
        image = report.attempt(path, read_nifti, path)
        if image is None:
            continue
        check_image(report, path, image.array)
        check_nifti_spacing(report, path, image)
        if label is not None and label_file is not None:
            check_pair(report, label_file, label, image, path)


def check_nnunet_root(report: Report, root: Path, max_cases: int | None = None) -> None:
    """Check an nnU-Net v2 raw dataset (``dataset.json``, ``imagesTr``, ``labelsTr``, ...)."""
    meta = report.attempt(root / "dataset.json", nnunet_io.read_dataset_json, root / "dataset.json")
    ending = str((meta or {}).get("file_ending", ".nii.gz"))
    declared = _nnunet_declared(meta)
    expected = len(nnunet_io.channel_names(meta)) if meta else 0
    for images_dir, labels_dir in (("imagesTr", "labelsTr"), ("imagesTs", "labelsTs")):
        images, labels = root / images_dir, root / labels_dir
        if images_dir == "imagesTr":
            for folder in (images, labels):
                if not folder.is_dir():
                    report.error(folder, "is missing", "add it (nnU-Net raw layout)")
        cases = _nnunet_images(report, images, ending)
        label_files = visible_files(labels, ending)
        if images_dir == "imagesTr" and meta is not None:
            told = meta.get("numTraining")
            if told is not None and told != len(cases):
                report.warn(
                    root / "dataset.json",
                    f"says numTraining {told} but imagesTr holds {len(cases)} cases",
                    f"set numTraining to {len(cases)}",
                )
        image_files = {case: files[min(files)] for case, files in cases.items()}
        if labels.is_dir():
            report_unpaired(report, image_files, label_files, f"label in {labels}")
            report_unpaired(report, label_files, image_files, f"image in {images}")
        if images.is_dir() and not cases and images_dir == "imagesTr":
            report.error(images, f"holds no <case>_0000{ending} image", "add the images")
        for case in progress(sorted(cases), max_cases, images_dir):
            report.checked += 1
            label = label_files.get(case) if labels.is_dir() else None
            _nnunet_case(report, cases[case], label, expected, declared)
    splits = root / "splits_final.json"
    if splits.is_file():
        training = sorted(_nnunet_images(Report("", ""), root / "imagesTr", ending))
        folds = report.attempt(splits, read_json, splits, "write it as nnU-Net's folds", list)
        for fold in range(len(folds or [])):
            report.attempt(splits, nnunet_io.read_fold, splits, fold, training)
