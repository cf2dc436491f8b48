"""Checks of a SAM-Med3D class-folder root (:mod:`segfm.data.io.class_folders`), for verify-data."""

from __future__ import annotations

from pathlib import Path

from segfm.data.io import class_folders as folders_io
from segfm.data.io.checks import (
    Report,
    check_image,
    check_label,
    check_nifti_spacing,
    check_pair,
    progress,
    report_unpaired,
    subfolders,
    visible_files,
)
from segfm.data.io.nifti import read_nifti


def _nifti_files(folder: Path) -> dict[str, Path]:
    """Visible NIfTI files of ``folder`` by name without ending."""
    found: dict[str, Path] = {}
    for ending in folders_io.ENDINGS:
        found |= visible_files(folder, ending)
    return found


def _class_item(report: Report, image_file: Path, label_file: Path) -> None:
    """One binary mask and its image."""
    label = report.attempt(label_file, read_nifti, label_file)
    image = report.attempt(image_file, read_nifti, image_file)
    if image is not None:
        check_image(report, image_file, image.array)
        check_nifti_spacing(report, image_file, image)
    if label is None:
        return
    ids = check_label(report, label_file, label.array, None)
    if ids is not None and len(ids - {0}) > 1:
        report.error(
            label_file,
            f"holds the values {sorted(ids - {0})}, but class-folder masks are binary",
            "split it into one mask per class folder",
        )
    if image is not None:
        check_pair(report, label_file, label, image, image_file)


def check_class_folders_root(report: Report, root: Path, max_cases: int | None = None) -> None:
    """Check a SAM-Med3D class-folder root (``<class>/<dataset>/{imagesTr,labelsTr}``)."""
    pairs: list[tuple[Path, Path]] = []
    for class_dir in subfolders(root):
        for dataset in subfolders(class_dir):
            images, labels = dataset / "imagesTr", dataset / "labelsTr"
            if not (images.is_dir() and labels.is_dir()):
                report.error(
                    dataset, "needs imagesTr/ and labelsTr/", "add them or move it out of the root"
                )
                continue
            image_files, label_files = _nifti_files(images), _nifti_files(labels)
            report_unpaired(report, image_files, label_files, f"mask in {labels}")
            report_unpaired(report, label_files, image_files, f"image in {images}")
            common = sorted(set(image_files) & set(label_files))
            pairs += [(image_files[c], label_files[c]) for c in common]
    if not pairs:
        report.error(root, "has no <class>/<dataset>/imagesTr/<case>.nii.gz", "check the folder")
    for image_file, label_file in progress(pairs, max_cases, "masks"):
        report.checked += 1
        _class_item(report, image_file, label_file)
