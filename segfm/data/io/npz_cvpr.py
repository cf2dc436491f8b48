"""The npz layout of the CVPR 2025 segmentation challenges (CVPR-BiomedSegFM).

A root holds::

    class_prompts.json              {"<DATASET>": {"1": [prompts], ..., "instance_label": 0|1}}
    <DATASET>/train/<name>.npz      imgs (D, H, W) 0-255, gts (D, H, W) ids, spacing (3,) z, y, x
    <DATASET>/test/<name>.npz       evaluation images: imgs, spacing, optional boxes, text_prompts
    <DATASET>/test_mask/<name>.npz  their ground truth: gts
    test/<name>.npz                 evaluation images of any dataset (+ test_mask/<name>.npz): the
                                    dataset is the longest name in class_prompts.json that
                                    prefixes the file name (``CT_AbdomenCT1K_001.npz``)

2D cases (``imgs`` (H, W), ``spacing`` (2,) or (3,)) are read as volumes of one slice (D = 1, a
z spacing of 1 when only two values are given). In an instance dataset (``instance_label: 1``,
one class) the values of ``gts`` are instance ids of that class, in a semantic one class ids.

Object arrays (``boxes``, ``text_prompts``) are stored in an npz as pickles, and unpickling can
run any code; everything else is read with ``allow_pickle=False``, and these two keys only from
evaluation files (the organisers' or one's own: trusted), only when present. Every problem with
the files raises :class:`~segfm.errors.DataError` naming the file and the fix.
"""

from __future__ import annotations

import os
import zipfile
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from segfm.data.io.atomic import save_npz
from segfm.data.io.json_file import read_json
from segfm.errors import DataError
from segfm.sample import ClassInfo

CLASS_PROMPTS = "class_prompts.json"
EVAL_IMAGES, EVAL_MASKS = "test", "test_mask"
BOX_KEYS = ("z_min", "z_max", "z_mid", "z_mid_x_min", "z_mid_y_min", "z_mid_x_max", "z_mid_y_max")
_READ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)


class DatasetEntry(NamedTuple):
    """One dataset of ``class_prompts.json``.

    Attributes:
        classes: Class id to its text prompts (the first is the class name).
        instance: ``gts`` holds instance ids of the single class (``instance_label: 1``).
    """

    classes: dict[int, tuple[str, ...]]
    instance: bool


@dataclass(frozen=True)
class NpzCase:
    """The files of one case.

    Attributes:
        dataset: Dataset name (a key of ``class_prompts.json``).
        path: The npz with ``imgs`` and ``spacing`` (and ``gts`` for training cases).
        mask: The evaluation ground truth (``test_mask/<name>.npz``); ``None`` when ``gts`` is
            in ``path`` or unknown.
    """

    dataset: str
    path: Path
    mask: Path | None = None

    @property
    def case_id(self) -> str:
        """``<DATASET>/<file stem>``, unique over datasets."""
        return f"{self.dataset}/{self.path.stem}"


@dataclass(frozen=True)
class NpzVolume:
    """The arrays of one case, as (D, H, W) volumes.

    Attributes:
        image: Intensities 0-255 in the stored type.
        label: Class or instance ids (stored integer type); ``None`` when not read or unknown.
        spacing: float64 ``(3,)`` voxel size in mm, ``(z, y, x)``.
        boxes: The ``boxes`` list (one dict of :data:`BOX_KEYS` per class, in sorted class order)
            with ``int`` values; ``None`` when absent or not read.
        text_prompts: Class id to prompt, from ``text_prompts`` without its ``instance_label``;
            ``None`` when absent or not read.
    """

    image: np.ndarray | None
    label: np.ndarray | None
    spacing: np.ndarray
    boxes: list[dict[str, int]] | None = None
    text_prompts: dict[int, str] | None = None


# --- class_prompts.json -----------------------------------------------------------------------


def parse_dataset_entry(name: str, value: Any, path: Path) -> DatasetEntry:
    """Check and convert one dataset entry of ``class_prompts.json``.

    Args:
        name: The dataset name (the entry's key).
        value: The entry as parsed from JSON.
        path: ``class_prompts.json`` (for the message).

    Returns:
        The entry.

    Raises:
        DataError: If the entry is malformed (naming the dataset and the fix).
    """
    fix = f'write it as "{name}": {{"1": ["Liver", ...], ..., "instance_label": 0}}'
    if not isinstance(value, dict):
        msg = f"{path}: the entry of {name!r} is a {type(value).__name__}; {fix}"
        raise DataError(msg)
    classes: dict[int, tuple[str, ...]] = {}
    for key, prompts in value.items():
        if key == "instance_label":
            continue
        if not (key.isdigit() and int(key) > 0):
            msg = f"{path}: {name!r} has the key {key!r}, not a class id >= 1; {fix}"
            raise DataError(msg)
        prompts = [prompts] if isinstance(prompts, str) else prompts
        if not (isinstance(prompts, list) and prompts and all(isinstance(p, str) for p in prompts)):
            msg = f"{path}: class {key} of {name!r} needs a non-empty list of prompt strings; {fix}"
            raise DataError(msg)
        classes[int(key)] = tuple(prompts)
    instance = value.get("instance_label", 0)
    if instance not in (0, 1):
        msg = f"{path}: {name!r} has instance_label {instance!r}; use 0 (semantic) or 1 (instance)"
        raise DataError(msg)
    if not classes or (instance and len(classes) != 1):
        msg = (
            f"{path}: {name!r} has {len(classes)} classes; a dataset needs at least one, an "
            f"instance dataset (instance_label 1) exactly one; {fix}"
        )
        raise DataError(msg)
    return DatasetEntry(dict(sorted(classes.items())), bool(instance))


def read_class_prompts(path: str | os.PathLike[str]) -> dict[str, DatasetEntry]:
    """Read and check ``class_prompts.json``.

    Args:
        path: The file. ``instance_label`` defaults to 0 when an entry lacks it; a single prompt
            string counts as a list of one.

    Returns:
        Dataset name to its entry.

    Raises:
        DataError: If the file is unreadable or an entry is malformed.
    """
    path = Path(path)
    content = read_json(path, 'write it as {"<DATASET>": {"1": [prompts], "instance_label": 0}}')
    if not content:
        msg = f"{path} lists no dataset; add one entry per dataset folder"
        raise DataError(msg)
    return {name: parse_dataset_entry(name, value, path) for name, value in content.items()}


def class_infos(entry: DatasetEntry) -> dict[int, ClassInfo]:
    """The ``classes`` of a sample: id to name (first prompt) and all prompts.

    An instance dataset's single class is returned as id 1, whatever its key (its label values
    are instance ids, not classes).
    """
    if entry.instance:
        prompts = next(iter(entry.classes.values()))
        return {1: ClassInfo(prompts[0], prompts)}
    return {i: ClassInfo(prompts[0], prompts) for i, prompts in entry.classes.items()}


# --- folders ----------------------------------------------------------------------------------


def dataset_folders(root: str | os.PathLike[str]) -> list[str]:
    """Names of the dataset folders of a root: those with a ``train/`` or ``test/`` folder."""
    root = Path(root)
    if not root.is_dir():
        msg = f"{root} is not a folder; give the root that holds {CLASS_PROMPTS}"
        raise DataError(msg)
    return sorted(
        d.name
        for d in root.iterdir()
        if d.is_dir()
        and not d.name.startswith(".")
        and d.name not in (EVAL_IMAGES, EVAL_MASKS)
        and ((d / "train").is_dir() or (d / EVAL_IMAGES).is_dir())
    )


def dataset_of_file(name: str, datasets: Iterable[str]) -> str | None:
    """The longest dataset name that prefixes a file name, ``None`` if none does."""
    matches = [d for d in datasets if name.startswith(d)]
    return max(matches, key=len) if matches else None


def _npz_files(folder: Path) -> list[Path]:
    """The visible ``.npz`` files of a folder, sorted; none if it is missing."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix == ".npz" and not p.name.startswith("."))


def find_training_cases(root: str | os.PathLike[str], datasets: Sequence[str]) -> list[NpzCase]:
    """The cases of ``<root>/<DATASET>/train`` for the given datasets, sorted by case id."""
    root = Path(root)
    cases = [NpzCase(d, p) for d in datasets for p in _npz_files(root / d / "train")]
    return sorted(cases, key=lambda c: c.case_id)


def _with_mask(dataset: str, path: Path, masks: Path) -> NpzCase:
    """An evaluation case, with its mask file if there is one."""
    mask = masks / path.name
    return NpzCase(dataset, path, mask if mask.is_file() else None)


def find_evaluation_cases(
    root: str | os.PathLike[str], datasets: Sequence[str], known: Iterable[str]
) -> list[NpzCase]:
    """The evaluation cases of the given datasets, sorted by case id.

    Args:
        root: The root.
        datasets: Datasets to keep.
        known: All dataset names of ``class_prompts.json`` (to name the files of ``<root>/test``).

    Returns:
        Cases of ``<root>/<DATASET>/test`` and of ``<root>/test``, each with its ``test_mask``
        file when one exists.

    Raises:
        DataError: If a file of ``<root>/test`` belongs to no known dataset, or a case is found
            twice.
    """
    root, known = Path(root), list(known)
    cases = [
        _with_mask(d, p, root / d / EVAL_MASKS)
        for d in datasets
        for p in _npz_files(root / d / EVAL_IMAGES)
    ]
    for path in _npz_files(root / EVAL_IMAGES):
        dataset = dataset_of_file(path.name, known)
        if dataset is None:
            msg = (
                f"{path} starts with no dataset name of {root / CLASS_PROMPTS}; rename it "
                f"<DATASET>_<name>.npz or move it to {root}/<DATASET>/{EVAL_IMAGES}"
            )
            raise DataError(msg)
        if dataset in datasets:
            cases.append(_with_mask(dataset, path, root / EVAL_MASKS))
    seen: dict[str, Path] = {}
    for case in cases:
        if seen.setdefault(case.case_id, case.path) != case.path:
            msg = f"{case.path} and {seen[case.case_id]} are both case {case.case_id}; keep one"
            raise DataError(msg)
    return sorted(cases, key=lambda c: c.case_id)


# --- reading ----------------------------------------------------------------------------------


def _open(path: Path) -> Any:
    """``np.load`` of an npz without pickles, failures reported as :class:`DataError`."""
    try:
        return np.load(path, allow_pickle=False)
    except _READ_ERRORS as e:
        msg = f"cannot read {path} ({e}); replace it with a valid npz"
        raise DataError(msg) from e


def _member(npz: Any, path: Path, key: str) -> np.ndarray:
    """One array of an open npz."""
    if key not in npz.files:
        msg = f"{path} has no '{key}' array (it has {npz.files}); add it or remove the file"
        raise DataError(msg)
    try:
        return npz[key]
    except _READ_ERRORS as e:
        msg = f"cannot read '{key}' of {path} ({e}); replace it with a valid npz"
        raise DataError(msg) from e


def _header(npz: Any, path: Path, key: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of an npz member, read from its header without decompressing it."""
    if key not in npz.files:
        msg = f"{path} has no '{key}' array (it has {npz.files}); add it or remove the file"
        raise DataError(msg)
    try:
        with npz.zip.open(f"{key}.npy") as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0
            if version != (1, 0):
                read = np.lib.format.read_array_header_2_0
            shape, _, dtype = read(f)
    except _READ_ERRORS as e:
        msg = f"cannot read '{key}' of {path} ({e}); replace it with a valid npz"
        raise DataError(msg) from e
    return tuple(shape), dtype


def _spacing(raw: np.ndarray, path: Path, ndim: int) -> np.ndarray:
    """``(z, y, x)`` spacing: 3 positive values (2 for a 2D case, with z = 1 added)."""
    values = np.asarray(raw, dtype=np.float64).ravel() if raw.dtype.kind in "iuf" else None
    if values is not None and values.size == 2 and ndim == 2:
        values = np.concatenate([[1.0], values])
    if values is None or values.shape != (3,) or not np.all(np.isfinite(values) & (values > 0)):
        msg = f"{path} has spacing {raw.tolist()!r}; store 3 positive voxel sizes in mm (z, y, x)"
        raise DataError(msg)
    return values


def _volume_shape(shape: tuple[int, ...], path: Path, key: str) -> tuple[int, int, int]:
    """(D, H, W) of an array of shape (D, H, W) or (H, W)."""
    if len(shape) not in (2, 3) or 0 in shape:
        msg = f"{path} has '{key}' of shape {shape}; store a (D, H, W) volume or an (H, W) image"
        raise DataError(msg)
    d, h, w = (1, *shape) if len(shape) == 2 else shape
    return d, h, w


def inspect_case(case: NpzCase, need_label: bool = False) -> tuple[int, int, int]:
    """Check a case's files from their headers and spacing, without decompressing the voxels.

    Checks ``imgs`` (a real number type, (D, H, W) or (H, W)) and ``spacing`` in ``path``, and
    the label (integer, the shape of ``imgs``): ``gts`` of ``mask`` when set, else of ``path``.

    Args:
        case: The case.
        need_label: The case must have a label (training cases).

    Returns:
        The (D, H, W) shape of its volume.

    Raises:
        DataError: If an array is missing, of the wrong type or shape.
    """
    label = None
    with _open(case.path) as npz:
        shape, dtype = _header(npz, case.path, "imgs")
        _spacing(_member(npz, case.path, "spacing"), case.path, len(shape))
        if case.mask is None and (need_label or "gts" in npz.files):
            label = _header(npz, case.path, "gts")
    if case.mask is not None:
        with _open(case.mask) as npz:
            label = _header(npz, case.mask, "gts")
    volume = _volume_shape(shape, case.path, "imgs")
    if dtype.kind not in "buif":
        msg = f"{case.path} has imgs of type {dtype}; store intensities 0-255 (uint8)"
        raise DataError(msg)
    if label is not None:
        label_path = case.mask or case.path
        if label[1].kind not in "biu":
            msg = f"{label_path} has gts of type {label[1]}; store integer label ids"
            raise DataError(msg)
        if label[0] != shape:
            rgb = " (RGB images are not supported: store grey levels)" if shape[-1:] == (3,) else ""
            msg = f"{label_path} has gts of shape {label[0]} but imgs is {shape}{rgb}; fix the pair"
            raise DataError(msg)
    return volume


def _object_member(path: Path, key: str) -> Any:
    """An object-array member (``boxes``, ``text_prompts``): a pickle, read from a trusted file.

    Object arrays in an npz are pickles and unpickling can run any code: only the evaluation
    files of the challenge layout carry them, and only these two keys are read this way.
    """
    try:
        with np.load(path, allow_pickle=True) as npz:
            return npz[key]
    except (*_READ_ERRORS, AttributeError, ImportError) as e:
        msg = f"cannot read '{key}' of {path} ({e}); replace it with a valid npz"
        raise DataError(msg) from e


def _boxes(raw: Any, path: Path) -> list[dict[str, int]]:
    """The ``boxes`` list with ``int`` values."""
    items = raw.tolist() if isinstance(raw, np.ndarray) else raw
    fix = f"store a list of dicts with keys {list(BOX_KEYS)}, one per class in sorted class order"
    if not isinstance(items, list):
        msg = f"{path} has boxes of type {type(items).__name__}; {fix}"
        raise DataError(msg)
    boxes = []
    for box in items:
        if not (isinstance(box, dict) and set(BOX_KEYS) <= set(box)):
            msg = f"{path} has a box {box!r}; {fix}"
            raise DataError(msg)
        try:
            boxes.append({k: int(box[k]) for k in BOX_KEYS})
        except (TypeError, ValueError) as e:
            msg = f"{path} has a box with a non-integer value ({e}); {fix}"
            raise DataError(msg) from e
    return boxes


def _text_prompts(raw: Any, path: Path) -> dict[int, str]:
    """Class id to prompt from the ``text_prompts`` dict (without ``instance_label``)."""
    content = raw.item() if isinstance(raw, np.ndarray) and raw.shape == () else raw
    fix = 'store a 0-d object array of {"<class id>": "prompt", ..., "instance_label": 0}'
    if not isinstance(content, dict):
        msg = f"{path} has text_prompts of type {type(content).__name__}; {fix}"
        raise DataError(msg)
    prompts = {}
    for key, prompt in content.items():
        if key == "instance_label":
            continue
        if not (str(key).isdigit() and isinstance(prompt, str)):
            msg = f"{path} has the text prompt {key!r}: {prompt!r}; {fix}"
            raise DataError(msg)
        prompts[int(key)] = prompt
    return dict(sorted(prompts.items()))


def _checked_image(image: np.ndarray, path: Path) -> np.ndarray:
    """``imgs`` as (D, H, W), its values checked to lie in 0-255."""
    if image.dtype.kind not in "buif" or image.size == 0:
        msg = f"{path} has imgs of type {image.dtype} and size {image.size}; store uint8 0-255"
        raise DataError(msg)
    low, high = image.min(), image.max()
    if not (low >= 0 and high <= 255):  # also false for NaN
        msg = f"{path} has imgs values in [{low}, {high}]; rescale them to 0-255"
        raise DataError(msg)
    return image[None] if image.ndim == 2 else image


def _checked_label(label: np.ndarray, path: Path) -> np.ndarray:
    """``gts`` as (D, H, W) of an integer type without negative values."""
    if label.dtype.kind not in "biu":
        msg = f"{path} has gts of type {label.dtype}; store integer label ids"
        raise DataError(msg)
    if label.dtype.kind == "i" and label.size and label.min() < 0:
        msg = f"{path} has negative gts values; store 0 for background and ids >= 1"
        raise DataError(msg)
    return label[None] if label.ndim == 2 else label


def read_case(
    case: NpzCase, read_image: bool = True, read_label: bool = True, read_prompts: bool = False
) -> NpzVolume:
    """Read a case.

    Args:
        case: The case; its label comes from ``mask`` when set, else from ``gts`` in ``path``
            (``None`` if there is none).
        read_image: Read ``imgs`` (else ``image`` is ``None``).
        read_label: Read the label (else ``label`` is ``None``).
        read_prompts: Read ``boxes`` and ``text_prompts`` when present (object arrays: see the
            module's note on pickles).

    Returns:
        The volume; 2D arrays become volumes of one slice.

    Raises:
        DataError: If an array is missing or unreadable, the shapes disagree, ``imgs`` leaves
            0-255, ``gts`` is not integer or negative, or ``spacing`` is not 3 positive values.
    """
    path, image, label = case.path, None, None
    with _open(path) as npz:
        ndim = len(_header(npz, path, "imgs")[0])
        spacing = _spacing(_member(npz, path, "spacing"), path, ndim)
        if read_image:
            image = _checked_image(_member(npz, path, "imgs"), path)
        if read_label and case.mask is None and "gts" in npz.files:
            label = _checked_label(_member(npz, path, "gts"), path)
        objects = [k for k in ("boxes", "text_prompts") if read_prompts and k in npz.files]
    if read_label and case.mask is not None:
        with _open(case.mask) as npz:
            label = _checked_label(_member(npz, case.mask, "gts"), case.mask)
    if image is not None and label is not None and label.shape != image.shape:
        msg = f"{case.mask or path} has gts of shape {label.shape} but imgs is {image.shape}"
        raise DataError(msg + "; fix the pair")
    boxes = _boxes(_object_member(path, "boxes"), path) if "boxes" in objects else None
    text = None
    if "text_prompts" in objects:
        text = _text_prompts(_object_member(path, "text_prompts"), path)
    return NpzVolume(image, label, spacing, boxes, text)


def check_label_ids(
    ids: Iterable[int], path: Path, dataset: str, entry: DatasetEntry, prompts_file: Path
) -> None:
    """Check that every label id of a semantic dataset's case has prompts.

    Args:
        ids: The non-zero ids of the case's label.
        path: Its file (for the message).
        dataset: Its dataset.
        entry: The dataset's entry of ``class_prompts.json``; instance datasets pass.
        prompts_file: ``class_prompts.json`` (for the message).

    Raises:
        DataError: If a semantic label holds an id without prompts.
    """
    missing = sorted({int(i) for i in ids} - set(entry.classes) - {0})
    if missing and not entry.instance:
        msg = (
            f"{path} holds label ids {missing} that have no prompts under {dataset!r} in "
            f"{prompts_file}; add them there or remove them from the labels"
        )
        raise DataError(msg)


# --- writing ----------------------------------------------------------------------------------


def _seg_array(array: np.ndarray, name: str) -> np.ndarray:
    """Class or instance ids as uint8 when they fit, else uint16."""
    array = np.asarray(array)
    if array.dtype.kind not in "biu" or (array.size and array.min() < 0):
        msg = f"{name} must hold non-negative integer ids, got {array.dtype}"
        raise ValueError(msg)
    high = int(array.max()) if array.size else 0
    if high > np.iinfo(np.uint16).max:
        msg = f"{name} holds id {high}, more than uint16 can store"
        raise ValueError(msg)
    return array.astype(np.uint8 if high < 256 else np.uint16)


def write_prediction_npz(
    path: str | os.PathLike[str], segs: np.ndarray, all_segs: list[np.ndarray] | None = None
) -> None:
    """Write a prediction in the submission layout, atomically (``<output>/<case name>.npz``).

    ``segs`` is stored as uint8 when its ids are below 256, else as uint16: the challenge's own
    scripts cast to uint8, which wraps instance ids above 255 (the reader here keeps them).

    Args:
        path: Destination file.
        segs: (D, H, W) integer class (or instance) ids.
        all_segs: The intermediate predictions of an interactive run (each like ``segs``),
            stored stacked as ``all_segs``.

    Raises:
        ValueError: If the ids are negative, not integers or above 65535, or the shapes of
            ``all_segs`` differ from ``segs``.
    """
    arrays = {"segs": _seg_array(segs, "segs")}
    if all_segs is not None:
        shapes = {np.shape(s) for s in all_segs}
        if not all_segs or shapes != {arrays["segs"].shape}:
            msg = (
                f"all_segs must be a non-empty list of {arrays['segs'].shape} arrays, got {shapes}"
            )
            raise ValueError(msg)
        arrays["all_segs"] = _seg_array(np.stack(all_segs), "all_segs")
    save_npz(path, **arrays)
