"""SAM-Med3D's own layout: one folder per class, holding datasets of binary masks.

::

    <root>/<class>/<dataset>/imagesTr/<case>.nii.gz
    <root>/<class>/<dataset>/labelsTr/<case>.nii.gz     binary mask of <class>, same file name

One item per ``(class, dataset, case)``: a case segmented for two classes appears under both.
Folders and files whose name starts with ``.`` are skipped (the volume cache lives in
``<root>/.segfm_cache``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from segfm.errors import DataError

ENDINGS = (".nii.gz", ".nii")


@dataclass(frozen=True)
class ClassFolderItem:
    """The files of one binary mask.

    Attributes:
        class_name: The class folder's name.
        dataset: The dataset folder's name.
        case_id: File name without ending.
        image: Image file.
        label: Binary mask file.
    """

    class_name: str
    dataset: str
    case_id: str
    image: Path
    label: Path

    @property
    def item_id(self) -> str:
        """``<class>/<dataset>/<case>``, unique in the root."""
        return f"{self.class_name}/{self.dataset}/{self.case_id}"


def _folders(folder: Path) -> list[Path]:
    """Visible sub-folders, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _volumes(folder: Path) -> dict[str, Path]:
    """Visible NIfTI files of ``folder`` by name without ending."""
    found = {}
    for path in sorted(folder.iterdir()):
        ending = next((e for e in ENDINGS if path.name.endswith(e)), None)
        if ending and path.is_file() and not path.name.startswith("."):
            found[path.name[: -len(ending)]] = path
    return found


def _dataset_items(class_name: str, folder: Path) -> list[ClassFolderItem]:
    """The items of one ``<class>/<dataset>`` folder."""
    images_dir, labels_dir = folder / "imagesTr", folder / "labelsTr"
    if not images_dir.is_dir() or not labels_dir.is_dir():
        msg = f"{folder} needs imagesTr/ and labelsTr/ folders; add them or move it out of the root"
        raise DataError(msg)
    images, labels = _volumes(images_dir), _volumes(labels_dir)
    for case, path in images.items():
        if case not in labels:
            msg = f"{path} has no mask in {labels_dir}; add {case}.nii.gz there or remove the image"
            raise DataError(msg)
    for case, path in labels.items():
        if case not in images:
            msg = f"{path} has no image in {images_dir}; add it or remove the mask"
            raise DataError(msg)
    return [
        ClassFolderItem(class_name, folder.name, case, images[case], labels[case])
        for case in sorted(images)
    ]


def find_items(root: str | os.PathLike[str]) -> tuple[list[str], list[ClassFolderItem]]:
    """Index a class-folder root.

    Args:
        root: The root folder.

    Returns:
        The class names, sorted (class id ``i + 1`` is ``names[i]``), and the items, sorted by
        class, dataset and case.

    Raises:
        DataError: If the root is missing or holds no image, or an image has no mask or a mask
            no image.
    """
    root = Path(root)
    if not root.is_dir():
        msg = f"{root} is not a folder; give the root of <class>/<dataset>/imagesTr folders"
        raise DataError(msg)
    names, items = [], []
    for class_dir in _folders(root):
        found = [i for d in _folders(class_dir) for i in _dataset_items(class_dir.name, d)]
        if found:
            names.append(class_dir.name)
            items.extend(found)
    if not items:
        msg = f"{root} has no <class>/<dataset>/imagesTr/<case>.nii.gz image; check the folder"
        raise DataError(msg)
    return names, items
