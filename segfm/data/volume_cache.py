"""The on-disk cache of preprocessed volumes: NIfTI is decoded once, not once per epoch.

An entry holds one case after reading, reorientation to canonical (RAS+), clamping / rescaling
and resampling (:func:`preprocess`)::

    <folder>/<name>.json                  geometry, classes present, and the stamp of the sources
    <folder>/<name>.<digest>.image.npy    float32 [Z, Y, X]
    <folder>/<name>.<digest>.label.npy    uint8 / int16 / int32 [Z, Y, X], when there is a label

``<name>`` is the image's path under the root without ending (``imagesTr/case_0000``). The stamp
records the size and modification time of the source files and the settings, ``<digest>`` hashes
it: a changed source gets a new entry, and processes that build the same entry at once (loader
workers, DDP ranks) write the same bytes. Every file is written atomically and the json last, so
a json only ever names complete arrays.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import multiprocessing
import multiprocessing.pool
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from segfm.data.io.atomic import save_json, save_npy
from segfm.data.io.geometry import isotropic_grid, resample, to_canonical, voxel_size
from segfm.data.io.nifti import read_nifti
from segfm.data.transforms3d import window
from segfm.errors import DataError

FORMAT = 1  # bump when the entry content changes meaning


@dataclass(frozen=True)
class VolumeItem:
    """One volume of a dataset and how to read it.

    Attributes:
        case_id: Id of the case in samples' ``meta`` and in split files.
        dataset: Name of the dataset it belongs to.
        image: Image file (channel 0).
        label: Label file, or ``None`` when unknown (test images without labels).
        value_range: Intensity range to clamp to, or ``None``.
        label_value: If set, the label file is a binary mask and its foreground gets this id.
    """

    case_id: str
    dataset: str
    image: Path
    label: Path | None
    value_range: tuple[float, float] | None = None
    label_value: int | None = None


@dataclass(frozen=True)
class Entry:
    """A cached volume.

    Attributes:
        meta: ``shape``, ``affine`` (of the cached grid), ``spacing`` ``(z, y, x)``,
            ``source_affine``, ``source_shape``, ``pad_value`` and ``classes`` (``{"id":
            {"count": voxels, "bbox": [z0, y0, x0, z1, y1, x1]}}``, stops exclusive).
        image: float32 ``[Z, Y, X]``, read-only memory map.
        label: ``[Z, Y, X]`` integer read-only memory map, or ``None``.
    """

    meta: dict[str, Any]
    image: np.ndarray
    label: np.ndarray | None


def cache_key(spacing: float | None, value_range: object, rescale: bool) -> str:
    """A short hash of the preprocessing settings, naming the cache folder they write."""
    text = json.dumps({"format": FORMAT, "spacing": spacing, "range": value_range, "rs": rescale})
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def _as_label(array: np.ndarray, label_value: int | None) -> np.ndarray:
    """Labels in the smallest integer type that holds them (a binary mask times its id)."""
    if label_value is not None:
        array = (array > 0).astype(np.int64) * label_value
    elif not np.issubdtype(array.dtype, np.integer):
        array = np.rint(array)
    high = int(array.max()) if array.size else 0
    dtype = np.uint8 if high < 256 else np.int16 if high < 2**15 else np.int32
    return array.astype(dtype)


def _check_label_values(array: np.ndarray, path: Path) -> None:
    """Refuse labels that are not integers >= 0 (interpolated or signed masks)."""
    if array.dtype.kind == "f" and not np.all(np.isfinite(array) & (array == np.round(array))):
        msg = (
            f"{path} holds non-integer label values; store integer class ids (resample labels "
            "with nearest neighbour)"
        )
        raise DataError(msg)
    if array.size and array.min() < 0:
        msg = f"{path} holds negative label values; store 0 for background and class ids >= 1"
        raise DataError(msg)


def _class_stats(label: np.ndarray | None) -> dict[str, dict[str, Any]]:
    """Voxel count and bounding box of every class id > 0 present in ``label``."""
    if label is None or not label.any():
        return {}
    counts = np.bincount(label.ravel().clip(0))
    boxes = ndimage.find_objects(label.clip(0))
    return {
        str(c): {
            "count": int(counts[c]),
            "bbox": [s.start for s in boxes[c - 1]] + [s.stop for s in boxes[c - 1]],
        }
        for c in range(1, len(counts))
        if counts[c] > 0
    }


def preprocess(
    item: VolumeItem, spacing: float | None, rescale: bool
) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """Read a volume, reorient it to canonical, clamp / rescale and resample it.

    Args:
        item: The volume.
        spacing: Isotropic voxel side in mm; ``None`` keeps the (canonical) native grid.
        rescale: Map the clamp range (else the volume's min and max) to ``[0, 1]``.

    Returns:
        The image float32 ``[Z, Y, X]`` (trilinear), the label (nearest) or ``None``, and the
        entry's meta (see :class:`Entry`).

    Raises:
        DataError: If a file is unreadable, the label's shape is not the image's, or the label
            holds values that are not integers >= 0.
    """
    source = read_nifti(item.image)
    image, affine = to_canonical(source.array.astype(np.float32), source.affine)
    image, pad_value = window(image, item.value_range, rescale)
    label = None
    if item.label is not None:
        mask = read_nifti(item.label).array
        if mask.shape != source.array.shape:
            msg = (
                f"{item.label} has shape {mask.shape} (z, y, x) but its image {item.image} has "
                f"{source.array.shape}; export the label on the image's grid"
            )
            raise DataError(msg)
        _check_label_values(mask, item.label)
        label = to_canonical(_as_label(mask, item.label_value), source.affine)[0]
    if spacing is not None:
        grid, shape = isotropic_grid(affine, image.shape, spacing)
        image = resample(image, affine, grid, shape, order=1, outside=None)
        if label is not None:
            label = resample(label, affine, grid, shape, order=0, outside=None)
        affine = grid
    meta = {
        "shape": list(image.shape),
        "affine": affine.tolist(),
        "spacing": voxel_size(affine).tolist(),
        "source_affine": source.affine.tolist(),
        "source_shape": list(source.array.shape),
        "pad_value": pad_value,
        "classes": _class_stats(label),
    }
    return image, label, meta


class VolumeCache:
    """Preprocessed volumes of one root under one folder (see the module docstring).

    Args:
        folder: Cache folder (one per preprocessing setting, see :func:`cache_key`).
        root: Dataset root; entries are named after the image's path below it.
        spacing: Isotropic voxel side in mm, or ``None`` for the native grid.
        rescale: Map intensities to ``[0, 1]`` (see :func:`segfm.data.transforms3d.window`).
    """

    def __init__(self, folder: Path, root: Path, spacing: float | None, rescale: bool) -> None:
        self.folder, self.root = Path(folder), Path(root)
        self.spacing, self.rescale = spacing, rescale

    def check_writable(self) -> None:
        """Create the folder and try a write, so a read-only root fails now, not in a worker.

        Raises:
            DataError: If the folder cannot be written.
        """
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=self.folder):
                pass
        except OSError as e:
            reason = e.strerror or type(e).__name__
            msg = f"cannot write {self.folder} ({reason}); set cache_dir to a writable folder"
            raise DataError(msg) from e

    def _name(self, item: VolumeItem) -> str:
        """The entry's path below the folder, without suffix."""
        try:
            name = item.image.relative_to(self.root).as_posix()
        except ValueError:
            name = "external/" + hashlib.sha1(str(item.image).encode()).hexdigest()[:16]
        return name.removesuffix(".gz").removesuffix(".nii")

    def _stamp(self, item: VolumeItem) -> dict[str, Any]:
        """What the entry depends on: source file sizes and times, and the settings."""
        files = [item.image] + ([item.label] if item.label is not None else [])
        stats = [os.stat(f) for f in files]
        sources = [[str(f), s.st_size, s.st_mtime_ns] for f, s in zip(files, stats, strict=True)]
        stamp = {"format": FORMAT, "sources": sources, "range": item.value_range}
        stamp |= {"label_value": item.label_value, "spacing": self.spacing, "rs": self.rescale}
        return json.loads(json.dumps(stamp))  # as read back from the json

    def _paths(self, item: VolumeItem, digest: str) -> tuple[Path, Path, Path]:
        """The json, image and label files of an entry."""
        base = self.folder / self._name(item)
        return (
            base.with_name(base.name + ".json"),
            base.with_name(f"{base.name}.{digest}.image.npy"),
            base.with_name(f"{base.name}.{digest}.label.npy"),
        )

    def _valid_meta(self, item: VolumeItem) -> dict[str, Any] | None:
        """The entry's meta if it is complete and up to date, else ``None``."""
        stamp = self._stamp(item)
        json_path, image_path, label_path = self._paths(item, _digest(stamp))
        try:
            meta = json.loads(json_path.read_text())
        except (OSError, ValueError):
            return None
        complete = image_path.is_file() and (item.label is None or label_path.is_file())
        return meta if meta.get("stamp") == stamp and complete else None

    def build(self, item: VolumeItem) -> dict[str, Any]:
        """Preprocess a volume and write its entry, replacing an outdated one.

        Args:
            item: The volume.

        Returns:
            The entry's meta.
        """
        stamp = self._stamp(item)
        digest = _digest(stamp)
        json_path, image_path, label_path = self._paths(item, digest)
        image, label, meta = preprocess(item, self.spacing, self.rescale)
        save_npy(image_path, image)
        if label is not None:
            save_npy(label_path, label)
        meta["stamp"] = stamp
        save_json(json_path, meta)
        stem = json_path.name.removesuffix(".json")
        ours = re.compile(re.escape(stem) + r"\.([0-9a-f]{16})\.(image|label)\.npy")
        for old in json_path.parent.glob(f"{glob.escape(stem)}.*.npy"):
            match = ours.fullmatch(old.name)
            if match and match[1] != digest:
                old.unlink(missing_ok=True)  # the arrays of an outdated entry
        return meta

    def meta(self, item: VolumeItem) -> dict[str, Any]:
        """The entry's meta, building the entry if it is missing or outdated."""
        return self._valid_meta(item) or self.build(item)

    def load(self, item: VolumeItem) -> Entry:
        """The entry of a volume, built first if missing or outdated.

        Args:
            item: The volume.

        Returns:
            The entry, its arrays memory-mapped.
        """
        for attempt in range(2):
            meta = self.meta(item)
            _, image_path, label_path = self._paths(item, _digest(meta["stamp"]))
            try:
                image = np.load(image_path, mmap_mode="r")
                label = None if item.label is None else np.load(label_path, mmap_mode="r")
            except FileNotFoundError:  # replaced by another process in between
                if attempt:
                    raise
                continue
            return Entry(meta, image, label)
        raise AssertionError  # unreachable

    def prepare(
        self, items: list[VolumeItem], workers: int = 0, progress: bool = True
    ) -> list[dict[str, Any]]:
        """Build the missing or outdated entries, in parallel, and return every item's meta.

        Args:
            items: The volumes.
            workers: Processes; 0 or 1 builds in this process.
            progress: Show a progress bar while building.

        Returns:
            The metas, in the order of ``items``.
        """
        found = {i: self._valid_meta(item) for i, item in enumerate(items)}
        metas = {i: meta for i, meta in found.items() if meta is not None}
        todo = [i for i in found if i not in metas]
        if todo:
            jobs = [items[i] for i in todo]
            with _pool(min(workers, len(todo))) as pool:
                built = pool.imap(self.build, jobs) if pool else map(self.build, jobs)
                bar = tqdm(built, total=len(todo), desc="caching volumes", disable=not progress)
                metas.update(zip(todo, bar, strict=True))
        return [metas[i] for i in range(len(items))]


def _digest(stamp: dict[str, Any]) -> str:
    """Short hash of a stamp."""
    return hashlib.sha1(json.dumps(stamp, sort_keys=True).encode()).hexdigest()[:16]


@contextlib.contextmanager
def _pool(workers: int) -> Iterator[multiprocessing.pool.Pool | None]:
    """A process pool for ``workers`` > 1, else ``None`` (build in this process)."""
    if workers <= 1:
        yield None
        return
    with multiprocessing.Pool(workers) as pool:
        yield pool
