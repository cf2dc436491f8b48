"""The nnU-Net v2 raw layout: which image goes with which label, and what the labels mean.

A dataset folder holds ``dataset.json``, ``imagesTr/<case>_<XXXX><ending>`` (one file per
channel ``XXXX``) and ``labelsTr/<case><ending>``, where ``<ending>`` is the ``file_ending`` of
``dataset.json`` (``.nii.gz`` by default); optionally test images ``imagesTs/`` (with their
labels in ``labelsTs/`` when they are known) and nnU-Net's cross-validation folds
``splits_final.json`` (``[{"train": [case ids], "val": [...]}, ...]``, one entry per fold).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segfm.data.io.json_file import read_json
from segfm.errors import DataError

_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@dataclass(frozen=True)
class CaseFiles:
    """The files of one case.

    Attributes:
        case_id: Case name, without channel suffix or file ending.
        image: Image file of the requested channel.
        label: Label file.
    """

    case_id: str
    image: Path
    label: Path


def _files(folder: Path, ending: str) -> dict[str, Path]:
    """Visible files of ``folder`` whose name ends with ``ending``, by name without the ending."""
    names = sorted(p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    return {n[: -len(ending)]: folder / n for n in names if n.endswith(ending)}


def find_images(
    images: str | os.PathLike[str], file_ending: str = ".nii.gz", channel: int = 0
) -> dict[str, Path]:
    """The images of one channel, without labels (e.g. ``imagesTs``).

    Args:
        images: Folder of ``<case>_<XXXX><file_ending>`` images.
        file_ending: File ending of the images.
        channel: Channel whose images are listed (``0`` is ``_0000``).

    Returns:
        Case id to image file, sorted by case id.

    Raises:
        DataError: If the folder is missing or has no image of the channel, or an image is not
            named after the layout.
    """
    images = Path(images)
    if not images.is_dir():
        msg = f"{images} is not a folder; give the folder of the nnU-Net raw images"
        raise DataError(msg)
    by_case: dict[str, Path] = {}
    for stem, path in _files(images, file_ending).items():
        match = _CHANNEL.match(stem)
        if match is None:
            msg = f"{path} is not named <case>_0000{file_ending}; rename it (nnU-Net raw layout)"
            raise DataError(msg)
        if int(match["channel"]) == channel:
            by_case[match["case"]] = path
    if not by_case:
        msg = f"{images} has no <case>_{channel:04d}{file_ending} image; check the folder"
        raise DataError(msg)
    return dict(sorted(by_case.items()))


def find_cases(
    images: str | os.PathLike[str],
    labels: str | os.PathLike[str],
    file_ending: str = ".nii.gz",
    channel: int = 0,
) -> list[CaseFiles]:
    """Pair the images of one channel with their labels.

    Args:
        images: Folder of ``<case>_<XXXX><file_ending>`` images.
        labels: Folder of ``<case><file_ending>`` labels.
        file_ending: File ending of both folders.
        channel: Channel whose images are paired (``0`` is ``_0000``).

    Returns:
        The cases, sorted by case id.

    Raises:
        DataError: If a folder is missing or empty, an image is not named after the layout, or an
            image has no label or a label no image.
    """
    images, labels = Path(images), Path(labels)
    for folder in (images, labels):
        if not folder.is_dir():
            msg = f"{folder} is not a folder; give the folder of the nnU-Net raw images/labels"
            raise DataError(msg)
    by_case = find_images(images, file_ending, channel)
    label_files = _files(labels, file_ending)
    for case, path in label_files.items():
        if case not in by_case:
            msg = (
                f"{path} has no image {images / f'{case}_{channel:04d}{file_ending}'}; "
                "add the image or move the label out of the folder"
            )
            raise DataError(msg)
    for case, path in by_case.items():
        if case not in label_files:
            msg = (
                f"{path} has no label {labels / f'{case}{file_ending}'}; "
                "add the label or move the image out of the folder"
            )
            raise DataError(msg)
    return [CaseFiles(case, by_case[case], label_files[case]) for case in sorted(by_case)]


def read_dataset_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read an nnU-Net ``dataset.json``.

    Args:
        path: The file.

    Returns:
        Its content.

    Raises:
        DataError: If the file is missing, is not JSON, or has no ``labels`` mapping.
    """
    content = read_json(path, "write it as nnU-Net's dataset.json")
    if not isinstance(content.get("labels"), dict):
        msg = f'{path} has no "labels" mapping; add "labels": {{"background": 0, ...}}'
        raise DataError(msg)
    return content


def label_names(dataset_json: dict[str, Any]) -> dict[int, str]:
    """Class names by id from the ``labels`` of a ``dataset.json``.

    Args:
        dataset_json: Content of the file (see :func:`read_dataset_json`).

    Returns:
        Id to name, without background (0) and without nnU-Net regions (lists of ids).
    """
    return {
        int(value): str(name)
        for name, value in dataset_json["labels"].items()
        if isinstance(value, int) and value != 0
    }


def channel_names(dataset_json: dict[str, Any]) -> dict[int, str]:
    """Channel names by index (``channel_names`` of nnU-Net v2, ``modality`` of v1).

    Args:
        dataset_json: Content of the file (see :func:`read_dataset_json`).

    Returns:
        Channel index to name (``{0: "CT"}``); empty if the file names none.
    """
    names = dataset_json.get("channel_names", dataset_json.get("modality", {}))
    if not isinstance(names, dict):
        return {}
    return {int(k): str(v) for k, v in names.items() if str(k).isdigit()}


def read_fold(
    path: str | os.PathLike[str], fold: int, cases: list[str] | set[str]
) -> dict[str, list[str]]:
    """One fold of nnU-Net's ``splits_final.json``.

    Args:
        path: The file: a JSON list with one ``{"train": [...], "val": [...]}`` per fold.
        fold: Index of the fold.
        cases: The case ids of ``imagesTr``.

    Returns:
        ``train`` and ``val`` lists of case ids.

    Raises:
        DataError: If the file is missing or malformed, the fold is out of range, or a case is
            unknown.
    """
    path = Path(path)
    if not path.is_file():
        msg = (
            f"{path} does not exist; copy nnU-Net's splits_final.json there "
            "or leave fold unset to split by val_fraction"
        )
        raise DataError(msg)
    folds = read_json(path, 'write it as [{"train": [case ids], "val": [case ids]}, ...]', list)
    if not 0 <= fold < len(folds):
        msg = f"{path} has {len(folds)} folds, so fold must be in 0..{len(folds) - 1}, not {fold}"
        raise DataError(msg)
    entry, known = folds[fold], set(cases)
    if not isinstance(entry, dict) or set(entry) - {"train", "val"}:
        msg = f'fold {fold} of {path} must be {{"train": [case ids], "val": [case ids]}}'
        raise DataError(msg)
    split = {key: [str(c) for c in entry.get(key, [])] for key in ("train", "val")}
    for key, ids in split.items():
        unknown = sorted(set(ids) - known)
        if unknown:
            msg = (
                f"fold {fold} of {path} lists {unknown[0]!r} in '{key}' but imagesTr has no such "
                "case; regenerate the file for this dataset"
            )
            raise DataError(msg)
    return split
