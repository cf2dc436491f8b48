"""The M3D-Seg layout of SegVol: per-dataset json, ``image.npy`` and sparse one-hot masks.

A root holds one folder per dataset code::

    <root>/<code>/<code>.json                      labels, train / test case lists
    <root>/<code>/<case>/image.npy                 float32 (1, X, Y, Z), SegVol's z-score
    <root>/<code>/<case>/mask_(C, X, Y, Z).npz     scipy csr of the one-hot labels, (C, X*Y*Z)
    <root>/<code>/<case>/pseudo_mask.npy           optional fh_seg regions, int64, on its own grid

Arrays are stored in the voxel order of the source NIfTI, ``(X, Y, Z)``. The readers here return
them in segfm's ``(Z, Y, X)`` order, the transpose SegVol applies at load (its
``DimTranspose(-1, -3)``).

Two json variants are read: the one SegVol's ``train_data_process.py`` (and
``data_tools.build_dataset``) writes, with ``numTraining`` and paths as given to the tool, and the
one of the downloaded M3D-Seg, with ``numTrain`` and paths relative to the root
(``0000/<case>/image.npy``). A path is looked up as given, then under the root, the code folder
and the json's folder, and at last as ``<code folder>/<case>/<file>`` (a moved root).
``data_tools.build_dataset`` also writes ``affine`` (the source NIfTI's, for the stored
``(X, Y, Z)`` axes) into each entry; the downloaded json has none.

Pseudo masks are cleansed as SegVol does at load (:func:`cleanse_pseudo_mask`).
"""

from __future__ import annotations

import ast
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.ndimage as ndi
from scipy import sparse

from segfm.data.io.json_file import read_json
from segfm.errors import DataError

PSEUDO_MASK = "pseudo_mask.npy"
IMAGE = "image.npy"
_MASK_NAME = re.compile(r"mask_(\(\s*\d+(?:\s*,\s*\d+)*\s*,?\s*\))\.npz")
_REBUILD = "rebuild the case with python -m data_tools.build_dataset"


@dataclass(frozen=True)
class M3DCase:
    """One case of an M3D-Seg dataset.

    Attributes:
        code: Dataset code (``"0000"``).
        name: Case folder name.
        image: ``image.npy``.
        mask: ``mask_(C, X, Y, Z).npz``.
        affine: ``(4, 4)`` voxel-to-world matrix of the stored ``(X, Y, Z)`` axes, if the json has
            one.
    """

    code: str
    name: str
    image: Path
    mask: Path
    affine: np.ndarray | None = None

    @property
    def case_id(self) -> str:
        """``<code>/<case>``, unique over datasets."""
        return f"{self.code}/{self.name}"

    @property
    def pseudo_mask(self) -> Path:
        """Where ``data_tools.build_pseudo_mask`` writes the fh_seg regions of this case."""
        return self.image.parent / PSEUDO_MASK


@dataclass(frozen=True)
class M3DDataset:
    """The json of one dataset code.

    Attributes:
        code: Dataset code.
        json_path: ``<root>/<code>/<code>.json``.
        labels: Class id to name, background left out.
        train: Training cases.
        test: Test cases.
    """

    code: str
    json_path: Path
    labels: dict[int, str]
    train: list[M3DCase]
    test: list[M3DCase]


def dataset_json(root: str | Path, code: str) -> Path:
    """The json of a dataset code: ``<root>/<code>/<code>.json``."""
    return Path(root) / code / f"{code}.json"


def _resolve(text: str, root: Path, code: str, json_path: Path) -> Path:
    """Find an entry's file (see the module docstring); the last candidate if none exists."""
    path = Path(text)
    candidates = [path] if path.is_absolute() else [root / path, root / code / path]
    candidates += [json_path.parent / path, json_path.parent / Path(*path.parts[-2:])]
    return next((c for c in candidates if c.is_file()), candidates[-1])


def _labels(content: dict[str, object], json_path: Path) -> dict[int, str]:
    """Class ids and names from ``labels`` (``{"0": "background", "1": "liver"}``)."""
    raw = content.get("labels")
    fix = 'give "labels": {"0": "background", "1": "<name>", ...} with integer keys'
    if not isinstance(raw, dict) or not raw:
        msg = f"{json_path} has no 'labels' mapping; {fix}"
        raise DataError(msg)
    try:
        labels = {int(key): str(name) for key, name in raw.items()}
    except ValueError as e:
        msg = f"{json_path} has a non-integer key in 'labels' {list(raw)}; {fix}"
        raise DataError(msg) from e
    labels.pop(0, None)
    if sorted(labels) != list(range(1, len(labels) + 1)):
        msg = f"{json_path} labels ids {sorted(labels)} are not 1..{len(labels)}; {fix}"
        raise DataError(msg)
    return labels


def _cases(entries: object, key: str, root: Path, code: str, json_path: Path) -> list[M3DCase]:
    """The cases of one list (``train`` / ``test``) of the json."""
    if not isinstance(entries, list):
        msg = f"{json_path} '{key}' is not a list of {{image, label}} entries; {_REBUILD}"
        raise DataError(msg)
    cases = []
    for entry in entries:
        if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
            msg = f"{json_path} '{key}' has an entry without image and label: {entry!r}"
            raise DataError(msg)
        image = _resolve(str(entry["image"]), root, code, json_path)
        mask = _resolve(str(entry["label"]), root, code, json_path)
        affine = entry.get("affine")
        cases.append(
            M3DCase(
                code,
                image.parent.name,
                image,
                mask,
                None if affine is None else np.asarray(affine, dtype=np.float64),
            )
        )
    return cases


def read_dataset(root: str | Path, code: str) -> M3DDataset:
    """Read the json of a dataset code (either variant, see the module docstring).

    Args:
        root: The M3D-Seg root.
        code: Dataset code, the name of its folder.

    Returns:
        Its classes and cases. File existence is checked by the readers (or :func:`check_case`).

    Raises:
        DataError: If the json is missing or malformed.
    """
    root = Path(root)
    json_path = dataset_json(root, code)
    if not json_path.is_file():
        msg = (
            f"{json_path} does not exist: dataset code {code!r} is not built under {root}; build "
            "it with python -m data_tools.build_dataset --code ... --out ROOT or fix the code"
        )
        raise DataError(msg)
    content = read_json(json_path, _REBUILD)
    train_key = "train" if "train" in content else "training"
    splits = {
        key: _cases(content.get(key, []), key, root, code, json_path) for key in (train_key, "test")
    }
    return M3DDataset(
        code, json_path, _labels(content, json_path), splits[train_key], splits["test"]
    )


def mask_shape(path: str | Path) -> tuple[int, ...]:
    """The ``(C, X, Y, Z)`` shape written in a mask file name (``mask_(2, 40, 40, 24).npz``).

    Raises:
        DataError: If the name does not hold a shape.
    """
    path = Path(path)
    match = _MASK_NAME.fullmatch(path.name)
    if match is None:
        msg = f"{path} is not named mask_(C, X, Y, Z).npz: its shape is unknown; {_REBUILD}"
        raise DataError(msg)
    return tuple(int(n) for n in ast.literal_eval(match.group(1)))


def _missing(path: Path) -> None:
    if not path.is_file():
        msg = f"{path} does not exist; fix the path in the dataset json or {_REBUILD}"
        raise DataError(msg)


def read_image(path: str | Path) -> np.ndarray:
    """Read ``image.npy`` (1, X, Y, Z) as float32 ``[Z, Y, X]``.

    Raises:
        DataError: If the file is missing, unreadable or not (1, X, Y, Z).
    """
    path = Path(path)
    _missing(path)
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as e:
        msg = f"cannot read {path} ({e}); {_REBUILD}"
        raise DataError(msg) from e
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[0] != 1:
        msg = f"{path} has shape {array.shape}, not (1, X, Y, Z); {_REBUILD}"
        raise DataError(msg)
    return np.ascontiguousarray(array[0].transpose(2, 1, 0), dtype=np.float32)


def _read_sparse(path: Path) -> tuple[sparse.csr_matrix, tuple[int, ...]]:
    """The csr matrix of a mask file and the shape of its name, checked against each other."""
    _missing(path)
    shape = mask_shape(path)
    try:
        matrix = sparse.load_npz(path).tocsr()
    except (OSError, ValueError, KeyError) as e:
        msg = f"cannot read {path} ({e}); {_REBUILD}"
        raise DataError(msg) from e
    if len(shape) != 4 or matrix.shape != (shape[0], int(np.prod(shape[1:]))):
        msg = f"{path} holds a {matrix.shape} matrix, not its name's {shape} as (C, X*Y*Z); "
        raise DataError(msg + _REBUILD)
    matrix.eliminate_zeros()
    return matrix, shape


def read_masks(path: str | Path) -> np.ndarray:
    """Read the one-hot masks as bool ``[C, Z, Y, X]`` (channel ``c`` is class ``c + 1``).

    Raises:
        DataError: If the file is missing, unreadable or disagrees with the shape in its name.
    """
    matrix, shape = _read_sparse(Path(path))
    return (matrix.toarray() != 0).reshape(shape).transpose(0, 3, 2, 1)


def read_label(path: str | Path) -> np.ndarray:
    """Read the one-hot masks as an int64 class-id map ``[Z, Y, X]`` (0 = background).

    Where channels overlap (a voxel in two classes), the higher class id wins, as if the classes
    were painted in order; a warning names the file and the voxel count.

    Raises:
        DataError: If the file is missing, unreadable or disagrees with the shape in its name.
    """
    path = Path(path)
    matrix, shape = _read_sparse(path)
    coo = matrix.tocoo()
    flat = np.zeros(int(np.prod(shape[1:])), dtype=np.int64)
    np.maximum.at(flat, coo.col, coo.row.astype(np.int64) + 1)
    overlap = int(np.count_nonzero(np.bincount(coo.col, minlength=flat.size) > 1))
    if overlap:
        warnings.warn(
            f"{path}: {overlap} voxels belong to several classes; the highest class id is kept",
            stacklevel=2,
        )
    return np.ascontiguousarray(flat.reshape(shape[1:]).transpose(2, 1, 0))


def read_pseudo_mask(path: str | Path) -> np.ndarray:
    """Read ``pseudo_mask.npy`` as int64 region ids ``[Z', Y', X']`` on its own grid.

    SegVol computes the regions on the image resized to (X, Y, Z) = (256, 256, 32), so the grid
    usually differs from the image's; resize it back with nearest neighbours
    (:func:`resize_nearest`).

    Raises:
        DataError: If the file is missing, unreadable or not 3D (a leading axis of 1 is dropped).
    """
    path = Path(path)
    if not path.is_file():
        msg = f"{path} does not exist; build it with python -m data_tools.build_pseudo_mask"
        raise DataError(msg)
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        msg = f"cannot read {path} ({e}); rebuild it with python -m data_tools.build_pseudo_mask"
        raise DataError(msg) from e
    while array.ndim > 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 3 or not np.issubdtype(array.dtype, np.integer):
        msg = (
            f"{path} is {array.dtype} {array.shape}, not integer region ids (X, Y, Z); rebuild it "
            "with python -m data_tools.build_pseudo_mask"
        )
        raise DataError(msg)
    return np.ascontiguousarray(array.transpose(2, 1, 0), dtype=np.int64)


def resize_nearest(array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Resize a label array to ``shape`` by nearest neighbour (voxel centres, no new values).

    Args:
        array: Any integer array.
        shape: Target shape, same number of axes.

    Returns:
        The array sampled at the voxel centres of the target grid.
    """
    if array.shape == tuple(shape):
        return array
    index = np.ix_(
        *[
            np.minimum(((np.arange(n) + 0.5) * (m / n)).astype(np.int64), m - 1)
            for n, m in zip(shape, array.shape, strict=True)
        ]
    )
    return array[index]


def check_case(case: M3DCase) -> tuple[int, int, int]:
    """Check that a case's image and mask exist and agree; return its ``(Z, Y, X)`` shape.

    Only headers are read (the image is memory-mapped, the mask shape comes from its name).

    Raises:
        DataError: If a file is missing or the shapes disagree.
    """
    _missing(case.image)
    _missing(case.mask)
    try:
        image_shape = np.load(case.image, mmap_mode="r", allow_pickle=False).shape
    except (OSError, ValueError) as e:
        msg = f"cannot read {case.image} ({e}); {_REBUILD}"
        raise DataError(msg) from e
    spatial = mask_shape(case.mask)[1:]
    if tuple(image_shape[-3:]) != spatial or len(image_shape) not in (3, 4):
        msg = (
            f"{case.image} has shape {image_shape} but {case.mask.name} says (X, Y, Z) = "
            f"{spatial}; {_REBUILD}"
        )
        raise DataError(msg)
    x, y, z = spatial
    return z, y, x


def cleanse_pseudo_mask(regions: np.ndarray, min_fraction: float = 0.001) -> np.ndarray:
    """SegVol's load-time cleansing of fh_seg regions; ``-1`` marks voxels to ignore.

    As in SegVol's ``cleanse_pseudo_label``: region ids with fewer voxels than ``min_fraction``
    of the volume become -1; then, id by id in increasing order, the region is opened and closed
    (scipy's default cross structure) and its connected components smaller than that threshold
    are dropped; the region's voxels become -1 and the cleaned region is written back (over
    later ids' voxels, as the original's in-place loop). Each id is processed on its bounding box
    (plus a 2-voxel margin, the reach of opening + closing), which gives the same result as the
    whole-volume operations at a fraction of the cost. As in the original (scipy's closing
    treats outside the volume as background), the outer voxel layer of the volume ends up -1.

    Args:
        regions: Integer region ids ``[*S]`` (3D); ``-1`` is already ignored.
        min_fraction: Smallest region or component, as a share of all voxels.

    Returns:
        A new int64 array of the same shape.

    Raises:
        ValueError: If ``regions`` is not 3D (squeeze a channel axis first).
    """
    if regions.ndim != 3:
        msg = f"cleanse_pseudo_mask needs a 3D array, got shape {regions.shape}"
        raise ValueError(msg)
    out = np.array(regions, dtype=np.int64, copy=True)
    threshold = out.size * min_fraction
    if not out.size:
        return out
    if out.min() < -1 or out.max() >= 4 * out.size:
        # sparse or negative ids: renumber them 0..K-1 for the tables below (-1 stays -1)
        ids, inverse = np.unique(out, return_inverse=True)
        ignored = ids == -1
        out = np.where(ignored, -1, np.cumsum(~ignored) - 1)[inverse.reshape(out.shape)]
        ids = ids[~ignored]
    else:
        ids = None
    shifted = (out + 1).ravel()  # -1 -> 0
    counts = np.bincount(shifted)
    small = counts < threshold
    small[0] = False  # -1 is not a region
    out[small[shifted].reshape(out.shape)] = -1
    kept = np.flatnonzero((counts >= threshold)[1:])
    # find_objects numbers regions from 1: a table from id + 1 to 1..K over the kept ids
    table = np.zeros(counts.size, dtype=np.int64)
    table[kept + 1] = np.arange(1, kept.size + 1)
    lookup = table[(out + 1).ravel()].reshape(out.shape)
    boxes = ndi.find_objects(lookup, max_label=kept.size)
    for value, box in zip(kept, boxes, strict=True):
        if box is None:
            continue
        box = tuple(
            slice(max(s.start - 2, 0), min(s.stop + 2, n))
            for s, n in zip(box, out.shape, strict=True)
        )
        view = out[box]
        region = view == value
        cleaned = ndi.binary_closing(ndi.binary_opening(region))
        components, count = ndi.label(cleaned)
        if count:
            sizes = np.bincount(components.ravel(), minlength=count + 1)
            cleaned &= (sizes >= threshold)[components]
        view[region] = -1
        view[cleaned] = value
    if ids is not None:
        out = np.where(out == -1, -1, ids[np.maximum(out, 0)])
    return out
