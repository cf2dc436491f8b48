"""Check a dataset before training (``segfm verify-data``): every problem, its file and its fix.

As nnU-Net's dataset integrity check, :func:`verify_data` walks every file of a data module's
root with the format's own readers (:mod:`segfm.data.io`), but lists every problem instead of
stopping at the first:

- pairing: every image has its label and every label its image (every channel for nnU-Net);
- reading: truncated or corrupt files, wrong array types, wrong channel counts;
- geometry: image and label shapes and affines agree, spacings are finite and > 0;
- values: no NaN / inf, no zero-size volume; labels are integers >= 0 within the declared
  classes (``dataset.json``, ``labels.json``, binary class-folder masks, ``class_prompts.json``);
- prompts (CVPR npz): every dataset folder and every label id has text prompts, an instance
  dataset has exactly one class.

**Errors** are fatal (loading would fail, or training would learn from wrong data); **warnings**
are legal but often a mistake: a label with background only, a constant image, a spacing outside
:data:`SPACING_RANGE`, an evaluation image without its mask, a missing ``labels.json`` or case
npz, ``numTraining`` differing from the files.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import yaml
from jsonargparse import ArgumentParser
from tqdm import tqdm

from segfm.data.base import BaseDataModule
from segfm.data.io import class_folders as folders_io
from segfm.data.io import nnunet as nnunet_io
from segfm.data.io import npy_slices as npy_io
from segfm.data.io import npz_cvpr as npz_io
from segfm.data.io.geometry import voxel_size
from segfm.data.io.json_file import read_json
from segfm.data.io.nifti import Volume, read_nifti
from segfm.errors import ConfigError, DataError

Severity = Literal["error", "warning"]
#: voxel sizes in mm outside this range are warned about (a header in other units?)
SPACING_RANGE = (0.01, 50.0)
#: largest difference between the affine entries of an image and its label
AFFINE_TOLERANCE = 1e-3
_SLICE = re.compile(r"^(?P<case>.+)-(?P<index>\d+)$")  # npy slices: <case>-NNN.npy
_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")  # nnU-Net: <case>_XXXX<ending>
_REDO_NPY = "re-create it with python -m data_tools.pre_ct_mr --overwrite"
T = TypeVar("T")


@dataclass(frozen=True)
class Problem:
    """One problem of a dataset.

    Attributes:
        severity: ``error`` (fatal) or ``warning``.
        file: The file or folder at fault.
        message: What is wrong.
        fix: What to do about it.
    """

    severity: Severity
    file: str
    message: str
    fix: str

    def __str__(self) -> str:
        text = f"{self.severity.upper()}: {self.file}: {self.message}"
        return f"{text}; {self.fix}" if self.fix else text


@dataclass
class Report:
    """The problems of a dataset, as :func:`verify_data` found them.

    Attributes:
        data: Name of the data module class.
        root: The dataset root.
        checked: Number of cases (class-folder items, npz files) read.
        problems: Every problem, in the order found.
    """

    data: str
    root: str
    checked: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def errors(self) -> list[Problem]:
        """The fatal problems."""
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        """The non-fatal problems."""
        return [p for p in self.problems if p.severity == "warning"]

    def add(self, severity: Severity, file: str | Path, message: str, fix: str) -> None:
        """Record a problem."""
        self.problems.append(Problem(severity, str(file), message, fix))

    def error(self, file: str | Path, message: str, fix: str) -> None:
        """Record a fatal problem."""
        self.add("error", file, message, fix)

    def warn(self, file: str | Path, message: str, fix: str) -> None:
        """Record a non-fatal problem."""
        self.add("warning", file, message, fix)

    def attempt(
        self, file: str | Path, read: Callable[..., T], *args: Any, also: Iterable[Path] = ()
    ) -> T | None:
        """Call a reader; record its :class:`DataError` as an error instead.

        Args:
            file: The file the reader reads.
            read: The reader.
            *args: Its arguments.
            also: Other files it reads (a label): the problem names the one the reader's
                message names first, else ``file``.

        Returns:
            What the reader returned, or ``None`` if it raised :class:`DataError`.
        """
        try:
            return read(*args)
        except DataError as e:
            text = str(e)
            named = [(text.find(str(f)), str(f)) for f in (file, *also) if str(f) in text]
            culprit = min(named)[1] if named else str(file)
            first = text.removeprefix("cannot read ").split(" ")[0].rstrip(":")
            if first.startswith(f"{file}{os.sep}"):  # a file inside the folder ``file``
                culprit = first
            unreadable = f"cannot read {culprit} "
            if text.startswith(unreadable):
                text = "cannot be read " + text[len(unreadable) :]
            for prefix in (f"{culprit}: ", f"{culprit} "):
                text = text.removeprefix(prefix)
            message, _, fix = text.rpartition("; ")
            self.error(culprit, message or fix, fix if message else "")
            return None

    def text(self) -> str:
        """The report as lines: every problem, then a summary line."""
        lines = [str(p) for p in self.problems]
        verdict = "FAILED" if self.errors else "OK"
        lines.append(
            f"{verdict}: {self.data} at {self.root}: {self.checked} cases checked, "
            f"{len(self.errors)} errors, {len(self.warnings)} warnings"
        )
        return "\n".join(lines)


# --- checks of arrays --------------------------------------------------------------------------


def _check_image(report: Report, file: Path, array: np.ndarray) -> None:
    """An image: not zero-size, finite, not constant (a warning)."""
    if array.size == 0:
        report.error(file, f"is empty (shape {array.shape})", "re-export it with its voxels")
        return
    finite = np.isfinite(array) if array.dtype.kind == "f" else np.ones(array.shape, bool)
    if not finite.all():
        report.error(
            file,
            f"holds {int((~finite).sum())} NaN or infinite values",
            "replace them (e.g. with the background intensity) and re-save it",
        )
    values = array[finite]
    if values.size and values.min() == values.max():
        report.warn(file, f"is constant ({values.flat[0]})", "check that the export is right")


def _check_label(
    report: Report, file: Path, array: np.ndarray, declared: set[int] | None, source: str = ""
) -> set[int] | None:
    """A label: integer values >= 0 within ``declared`` (when known), some foreground.

    Returns:
        The values present, or ``None`` if they are not integers >= 0.
    """
    if array.size == 0:
        report.error(file, f"is empty (shape {array.shape})", "re-export it with its voxels")
        return None
    if array.dtype.kind == "f":
        finite = np.isfinite(array)
        off = array[finite][array[finite] != np.round(array[finite])]
        if not finite.all() or off.size:
            example = off.flat[0] if off.size else array[~finite].flat[0]
            report.error(
                file,
                f"holds non-integer label values (e.g. {example})",
                "store integer class ids (resample labels with nearest neighbour)",
            )
            return None
    elif array.dtype.kind not in "biu":
        report.error(file, f"has labels of type {array.dtype}", "store integer class ids")
        return None
    ids = {int(v) for v in np.unique(array)}
    if min(ids) < 0:
        negative = sorted(i for i in ids if i < 0)
        report.error(file, f"holds negative labels {negative}", "store 0 and class ids >= 1")
        return None
    if declared is not None and ids - declared - {0}:
        unknown = sorted(ids - declared - {0})
        report.error(
            file,
            f"holds label values {unknown} not declared in {source} (declared: {sorted(declared)})",
            f"declare them in {source} or remap them",
        )
    if ids == {0}:
        report.warn(
            file,
            "is empty: background only, no structure",
            "check the export; a case without structures teaches nothing",
        )
    return ids


def _check_spacing(report: Report, file: Path, spacing: Iterable[float]) -> None:
    """Spacing (mm): finite and > 0 (error), within :data:`SPACING_RANGE` (warning)."""
    values = np.asarray(list(spacing), dtype=np.float64)
    low, high = SPACING_RANGE
    if not np.all(np.isfinite(values) & (values > 0)):
        report.error(file, f"has spacing {values.tolist()}", "store voxel sizes > 0 in mm")
    elif values.min() < low or values.max() > high:
        report.warn(
            file,
            f"has spacing {values.tolist()} mm, outside {low}-{high} mm",
            "check the units of the header (mm expected)",
        )


def _check_nifti_spacing(report: Report, file: Path, volume: Volume) -> None:
    """A NIfTI's voxel sizes: sane, and the header's ``pixdim`` those of its affine."""
    _check_spacing(report, file, volume.spacing)
    header, grid = np.asarray(volume.spacing), voxel_size(volume.affine)
    if not np.allclose(header, grid, rtol=1e-3, atol=1e-4):
        report.error(
            file,
            f"has voxel sizes {header.tolist()} in its header (pixdim) but "
            f"{np.round(grid, 4).tolist()} in its affine (z, y, x); a zero pixdim is read as 1",
            "re-save it with pixdim equal to the affine's voxel sizes",
        )


def _check_pair(report: Report, label_file: Path, label: Volume, image: Volume, of: Path) -> bool:
    """A NIfTI label and its image: same shape and affine."""
    if label.array.shape != image.array.shape:
        report.error(
            label_file,
            f"has shape {label.array.shape} (z, y, x) but its image {of} has {image.array.shape}",
            "export the label on the image's grid",
        )
        return False
    difference = float(np.abs(label.affine - image.affine).max())
    if difference > AFFINE_TOLERANCE:
        report.error(
            label_file,
            f"has another affine than its image {of} (largest difference {difference:.3g})",
            "give the label the image's origin, spacing and direction, or resample it onto it",
        )
        return False
    return True


# --- small helpers -----------------------------------------------------------------------------


def _visible(folder: Path, ending: str) -> dict[str, Path]:
    """Visible files of ``folder`` ending with ``ending``, by name without it."""
    if not folder.is_dir():
        return {}
    return {
        p.name[: -len(ending)]: p
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name.endswith(ending) and not p.name.startswith(".")
    }


def _subfolders(folder: Path) -> list[Path]:
    """Visible sub-folders, sorted."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _progress(items: list[T], max_cases: int | None, what: str) -> Iterable[T]:
    """The first ``max_cases`` items with a progress bar (on a terminal)."""
    return tqdm(items[:max_cases], desc=f"verifying {what}", unit="case", disable=None)


def _unpaired(report: Report, found: dict[str, Path], other: dict[str, Path], kind: str) -> None:
    """Errors for the files of ``found`` without a partner in ``other``."""
    for name in sorted(set(found) - set(other)):
        report.error(found[name], f"has no {kind}", f"add its {kind} or remove the file")


# --- MedSAM npy slices -------------------------------------------------------------------------


def _npy_case_volume(
    report: Report, path: Path, slices: list[tuple[int, Path]], declared: set[int] | None
) -> None:
    """The ``npz/<case>.npz`` volume of a case and its slice indices."""
    volume = report.attempt(path, npy_io.read_volume, path)
    if volume is None:
        return
    _check_spacing(report, path, volume.spacing)
    _check_label(report, path, volume.label[0], declared, "labels.json")
    depth = volume.image.shape[1]
    for index, file in slices:
        if index >= depth:
            report.error(file, f"is slice {index} but {path} has {depth} slices", _REDO_NPY)


def verify_npy_slices(report: Report, root: Path, max_cases: int | None = None) -> None:
    """Check a MedSAM npy-slice root (``imgs/``, ``gts/``, ``npz/``, ``labels.json``)."""
    images, labels = _visible(root / "imgs", ".npy"), _visible(root / "gts", ".npy")
    for sub in ("imgs", "gts"):
        if not (root / sub).is_dir():
            report.error(root / sub, "is missing", "write the root with data_tools.pre_ct_mr")
    _unpaired(report, images, labels, f"mask in {root / 'gts'}")
    _unpaired(report, labels, images, f"image in {root / 'imgs'}")
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
    for case in _progress(sorted(cases), max_cases, "cases"):
        report.checked += 1
        for _, file in cases[case]:
            files = npy_io.SliceFiles(case, 0, file, root / "gts" / file.name)
            pair = report.attempt(file, npy_io.read_slice, files, also=[files.label])
            if pair is not None:
                _check_label(report, files.label, pair[1][0], declared, "labels.json")
        npz = root / "npz" / f"{case}.npz"
        if npz.is_file():
            _npy_case_volume(report, npz, cases[case], declared)
        else:
            report.warn(
                npz,
                f"is missing: case {case} can train but not be tested or predicted",
                _REDO_NPY,
            )
    for stem, path in _visible(root / "npz", ".npz").items():
        if stem not in cases:
            report.warn(path, "has no slice in imgs/, so it is not used", "write its slices")


# --- nnU-Net raw -------------------------------------------------------------------------------


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
    for stem, path in _visible(folder, ending).items():
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
        _check_nifti_spacing(report, label_file, label)
        _check_label(report, label_file, label.array, declared, "dataset.json")
    for path in (channels[c] for c in sorted(channels)):
        image = report.attempt(path, read_nifti, path)
        if image is None:
            continue
        _check_image(report, path, image.array)
        _check_nifti_spacing(report, path, image)
        if label is not None and label_file is not None:
            _check_pair(report, label_file, label, image, path)


def verify_nnunet(report: Report, root: Path, max_cases: int | None = None) -> None:
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
        label_files = _visible(labels, ending)
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
            _unpaired(report, image_files, label_files, f"label in {labels}")
            _unpaired(report, label_files, image_files, f"image in {images}")
        if images.is_dir() and not cases and images_dir == "imagesTr":
            report.error(images, f"holds no <case>_0000{ending} image", "add the images")
        for case in _progress(sorted(cases), max_cases, images_dir):
            report.checked += 1
            label = label_files.get(case) if labels.is_dir() else None
            _nnunet_case(report, cases[case], label, expected, declared)
    splits = root / "splits_final.json"
    if splits.is_file():
        training = sorted(_nnunet_images(Report("", ""), root / "imagesTr", ending))
        folds = report.attempt(splits, read_json, splits, "write it as nnU-Net's folds", list)
        for fold in range(len(folds or [])):
            report.attempt(splits, nnunet_io.read_fold, splits, fold, training)


# --- SAM-Med3D class folders ------------------------------------------------------------------


def _nifti_files(folder: Path) -> dict[str, Path]:
    """Visible NIfTI files of ``folder`` by name without ending."""
    found: dict[str, Path] = {}
    for ending in folders_io.ENDINGS:
        found |= _visible(folder, ending)
    return found


def _class_item(report: Report, image_file: Path, label_file: Path) -> None:
    """One binary mask and its image."""
    label = report.attempt(label_file, read_nifti, label_file)
    image = report.attempt(image_file, read_nifti, image_file)
    if image is not None:
        _check_image(report, image_file, image.array)
        _check_nifti_spacing(report, image_file, image)
    if label is None:
        return
    ids = _check_label(report, label_file, label.array, None)
    if ids is not None and len(ids - {0}) > 1:
        report.error(
            label_file,
            f"holds the values {sorted(ids - {0})}, but class-folder masks are binary",
            "split it into one mask per class folder",
        )
    if image is not None:
        _check_pair(report, label_file, label, image, image_file)


def verify_class_folders(report: Report, root: Path, max_cases: int | None = None) -> None:
    """Check a SAM-Med3D class-folder root (``<class>/<dataset>/{imagesTr,labelsTr}``)."""
    pairs: list[tuple[Path, Path]] = []
    for class_dir in _subfolders(root):
        for dataset in _subfolders(class_dir):
            images, labels = dataset / "imagesTr", dataset / "labelsTr"
            if not (images.is_dir() and labels.is_dir()):
                report.error(
                    dataset, "needs imagesTr/ and labelsTr/", "add them or move it out of the root"
                )
                continue
            image_files, label_files = _nifti_files(images), _nifti_files(labels)
            _unpaired(report, image_files, label_files, f"mask in {labels}")
            _unpaired(report, label_files, image_files, f"image in {images}")
            common = sorted(set(image_files) & set(label_files))
            pairs += [(image_files[c], label_files[c]) for c in common]
    if not pairs:
        report.error(root, "has no <class>/<dataset>/imagesTr/<case>.nii.gz", "check the folder")
    for image_file, label_file in _progress(pairs, max_cases, "masks"):
        report.checked += 1
        _class_item(report, image_file, label_file)


# --- CVPR 2025 npz -----------------------------------------------------------------------------


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
    _check_image(report, case.path, volume.image)
    _check_spacing(report, case.path, volume.spacing)
    label_file = case.mask or case.path
    if volume.label is None:
        if not training:
            report.warn(
                case.path,
                f"has no ground truth {case.path.parent.with_name('test_mask') / case.path.name}",
                "add it to score the case (predict works without)",
            )
        return
    ids = _check_label(report, label_file, volume.label, None)
    if ids is not None and entry is not None:
        report.attempt(
            label_file, npz_io.check_label_ids, ids, label_file, case.dataset, entry, prompts
        )


def _npz_orphan_masks(report: Report, root: Path, datasets: Iterable[str]) -> None:
    """Warnings for evaluation masks without their image."""
    for folder in [root, *(root / d for d in datasets)]:
        images = _visible(folder / npz_io.EVAL_IMAGES, ".npz")
        for stem, path in _visible(folder / npz_io.EVAL_MASKS, ".npz").items():
            if stem not in images:
                report.warn(path, "has no image in test/", "add the image or remove the mask")


def verify_npz(
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
    for case in _progress(training, max_cases, "training cases"):
        report.checked += 1
        _npz_case(report, case, entries.get(case.dataset), prompts, training=True)
    for case in _progress(evaluation or [], max_cases, "evaluation cases"):
        report.checked += 1
        _npz_case(report, case, entries.get(case.dataset), prompts, training=False)
    _npz_orphan_masks(report, root, selected)


# --- entry points ------------------------------------------------------------------------------


def verify_data(data: BaseDataModule, max_cases: int | None = None) -> Report:
    """Check every file of a data module's root and list every problem.

    Args:
        data: A :class:`~segfm.data.NpySliceDataModule`, :class:`~segfm.data.NnUNetDataModule`,
            :class:`~segfm.data.ClassFolderDataModule` or :class:`~segfm.data.NpzDataModule`
            (or a subclass); nothing of it is set up or cached.
        max_cases: Read at most this many cases per folder (files are always paired in full).

    Returns:
        The report: its ``problems`` (errors are fatal, warnings not) and :meth:`Report.text`.

    Raises:
        ConfigError: If ``data`` is of a format this check does not know.
    """
    from segfm.data.class_folders import ClassFolderDataModule
    from segfm.data.nnunet import NnUNetDataModule
    from segfm.data.npy_slices import NpySliceDataModule
    from segfm.data.npz import NpzDataModule

    checks: list[tuple[type, Callable[[Report, Path], None]]] = [
        (NpySliceDataModule, lambda r, root: verify_npy_slices(r, root, max_cases)),
        (NnUNetDataModule, lambda r, root: verify_nnunet(r, root, max_cases)),
        (ClassFolderDataModule, lambda r, root: verify_class_folders(r, root, max_cases)),
        (NpzDataModule, lambda r, root: verify_npz(r, root, data.dataset_names, max_cases)),
    ]
    check = next((c for cls, c in checks if isinstance(data, cls)), None)
    if check is None:
        known = ", ".join(cls.__name__ for cls, _ in checks)
        msg = (
            f"verify-data does not know {type(data).__name__}; name the format with --data "
            f"configs/data/<format>.yaml ({known})"
        )
        raise ConfigError(msg)
    root = Path(data.root)
    report = Report(type(data).__name__, str(root))
    if not root.is_dir():
        report.error(root, "does not exist or is not a folder", "give the dataset root")
    else:
        check(report, root)
    return report


def _yaml(path: Path, what: str) -> Any:
    """The content of a YAML file, or a one-line :class:`ConfigError`."""
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        msg = f"cannot read {what} {path} ({reason}); give an existing YAML file"
        raise ConfigError(msg) from e


def _data_block(config: str) -> dict[str, Any]:
    """The ``data`` block of a run config (inline, or the path of a data config)."""
    path = Path(config)
    content = _yaml(path, "--config")
    if not isinstance(content, dict) or content.get("data") is None:
        msg = f"{path} has no data block; pass --data configs/data/<format>.yaml instead"
        raise ConfigError(msg)
    block = content["data"]
    if isinstance(block, str):  # a data config, named from here or from the run config's folder
        near = path.parent / block
        block = _yaml(near if near.is_file() and not Path(block).is_file() else Path(block), "data")
    if not isinstance(block, dict):
        msg = f"the data block of {path} is not a mapping; write class_path and init_args"
        raise ConfigError(msg)
    return block


def _class(class_path: str) -> Any:
    """The class a ``class_path`` names (``None`` if it cannot be imported)."""
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name, None)
    except ImportError:
        return None


def _merge(block: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """A config's data block with the ``--data`` options of the command line over it.

    The command line's ``init_args`` that equal their class's defaults are the parser's
    fill-ins, not the user's, and leave the config's values; a bare ``--data.init_args.X``
    (parsed as the base class) keeps the config's class.
    """
    cls = _class(str(given.get("class_path", "")))
    defaults = {} if cls is None else inspect.signature(cls.__init__).parameters
    args = {
        k: v
        for k, v in (given.get("init_args") or {}).items()
        if k not in defaults or defaults[k].default != v
    }
    class_path = given.get("class_path")
    if cls is None or cls is BaseDataModule:
        class_path = block.get("class_path")
    return {"class_path": class_path, "init_args": {**(block.get("init_args") or {}), **args}}


def build_data_module(block: Any, origin: str = "--data") -> BaseDataModule:
    """Instantiate a data module from a ``class_path`` / ``init_args`` block, as the CLI does.

    Args:
        block: A data module, a mapping ``{"class_path": ..., "init_args": {...}}`` or the path
            of a YAML file holding one.
        origin: Where the block comes from (named in errors).

    Returns:
        The data module (not set up).

    Raises:
        ConfigError: If the block names no data module or has invalid arguments.
    """
    if isinstance(block, BaseDataModule):
        return block
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--data", type=BaseDataModule, sub_configs=True)
    try:
        parsed = parser.parse_object({"data": block})
        return parser.instantiate_classes(parsed).data
    except Exception as e:  # jsonargparse's and the module's own checks, wrapped as they come
        reason = " ".join(str(e).split())[:300]
        msg = f"{origin}: not a valid data module ({reason}); see configs/data/*.yaml"
        raise ConfigError(msg) from e


def verify_data_command(
    data: BaseDataModule | None = None,
    config: str | None = None,
    max_cases: int | None = None,
    strict: bool = False,
) -> Report:
    """Check a dataset before training: every problem with its file and fix.

    Prints every problem, then a summary; ends with a one-line error (exit status 2) when a
    problem is fatal (``--strict``: any problem). Nothing is written.

    Args:
        data: The data module, as for ``fit``: ``--data configs/data/<format>.yaml`` and
            ``--data.init_args.root DIR``.
        config: A run config (``--config configs/medsam/demo.yaml``) whose ``data`` block is
            checked; ``--data.init_args.*`` given as well override its values.
        max_cases: Read at most this many cases per folder (files are always paired in full).
        strict: Treat warnings (empty labels, unusual spacing, ...) as fatal too.

    Returns:
        The report.

    Raises:
        ConfigError: If neither ``--data`` nor ``--config`` names a data module.
        DataError: If the dataset has a fatal problem (after printing them all).
    """
    if data is None and config is None:
        msg = "verify-data needs --data configs/data/<format>.yaml (or --config RUN.yaml)"
        raise ConfigError(msg)
    if config is None:
        module = build_data_module(_as_plain(data), "--data")
    else:
        block = _data_block(config)
        if data is not None:
            block = _merge(block, _as_plain(data))
        module = build_data_module(block, f"the data block of {config} (with --data)")
    report = verify_data(module, max_cases)
    print(report.text())
    fatal = report.problems if strict else report.errors
    if fatal:
        kind = ("problem" if strict else "error") + ("s" if len(fatal) > 1 else "")
        msg = (
            f"{report.root} has {len(fatal)} {kind} (listed above); fix them and run "
            "segfm verify-data again"
        )
        raise DataError(msg)
    return report


def _as_plain(value: Any) -> Any:
    """A jsonargparse Namespace as nested dicts (the CLI hands subcommands plain values)."""
    return value.as_dict() if hasattr(value, "as_dict") else value
