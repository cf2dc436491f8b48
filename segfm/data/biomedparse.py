"""BiomedParse v2's data: 2.5D slices of the CVPR 2025 npz volumes, and whole volumes to test."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from segfm.data.base import BaseDataModule
from segfm.data.biomedparse_augment import SliceAugment
from segfm.data.io.json_file import read_json
from segfm.data.io.npz_cvpr import (
    CLASS_PROMPTS,
    DatasetEntry,
    NpzCase,
    check_label_ids,
    class_infos,
    find_evaluation_cases,
    find_training_cases,
    inspect_case,
    read_case,
    read_class_prompts,
)
from segfm.data.loaders import ResumableDataLoader, global_seed
from segfm.data.npz import NpzVolumeDataset
from segfm.data.splits import split_cases
from segfm.data.volume_chunks import VolumeChunkSampler
from segfm.data.volume_lru import VolumeLRU
from segfm.errors import DataError
from segfm.sample import Sample, collate
from segfm.transforms.encoding25d import (
    Geometry,
    encode_slice,
    multi_view_axes,
    plan,
    resample_label,
    slice_axis,
)

_PNG_NAME = re.compile(r"(?P<stem>.+?)(?:_view(?P<axis>[12]))?_(?P<index>\d+)\.png")


@dataclass(frozen=True)
class SliceItem:
    """One 2.5D training slice.

    Attributes:
        case: Its volume.
        axis: The slicing axis.
        index: The slice along ``axis``.
        geometry: The volume's encoding (``None`` for a PNG whose npz is missing).
        spacing: ``(rows, columns)`` mm of the encoded pixels (1 mm when unknown).
        png: The tool's image PNG, or ``None`` to encode from the npz.
    """

    case: NpzCase
    axis: int
    index: int
    geometry: Geometry | None
    spacing: tuple[float, float]
    png: Path | None = None

    @property
    def name(self) -> str:
        """The tool's file name, ``<stem>_<iii>.png`` or ``<stem>_view<k>_<iii>.png``."""
        view = "" if self.axis == 0 else f"_view{self.axis}"
        return f"{self.case.path.stem}{view}_{self.index:03d}.png"


def _pixel_spacing(geometry: Geometry, spacing: np.ndarray) -> tuple[float, float]:
    """Millimetres of an encoded pixel: the slice plane's spacing, scaled by padded / size."""
    plane = [float(s) for i, s in enumerate(spacing) if i != geometry.axis]
    rows, cols = geometry.padded
    return plane[0] * rows / geometry.size, plane[1] * cols / geometry.size


def _read_png(path: Path, rgb: bool, size: int) -> np.ndarray:
    """A slice PNG of the tool: RGB in cv2's byte order, or 8/16-bit label ids."""
    try:
        with Image.open(path) as png:
            array = np.asarray(png.convert("RGB") if rgb else png)
    except OSError as e:
        msg = f"cannot read {path} ({e}); rerun python -m data_tools.process_2d"
        raise DataError(msg) from e
    if array.shape[:2] != (size, size):
        msg = f"{path} is {array.shape[:2]}, not {size} x {size}; rerun the tool with --size {size}"
        raise DataError(msg)
    return array[..., ::-1].transpose(2, 0, 1) if rgb else array  # files hold (i+1, i-1, i)


class BiomedParseSliceDataset(Dataset[Sample]):
    """2.5D slices, encoded from the npz on the fly or read from the tool's PNGs.

    Args:
        items: The slices.
        entries: Dataset name to its ``class_prompts.json`` entry.
        prompts_file: ``class_prompts.json`` (named in errors).
        size: Side of the slices.
        augment: Training augmentation, or ``None``.
        cache_bytes: Budget of the decoded volumes kept by each loading process
            (:class:`~segfm.data.volume_lru.VolumeLRU`); 0 decodes the npz for every slice.
    """

    def __init__(
        self,
        items: list[SliceItem],
        entries: dict[str, DatasetEntry],
        prompts_file: Path,
        size: int,
        augment: SliceAugment | None,
        cache_bytes: int = 0,
    ) -> None:
        self.items, self.entries, self.prompts_file = items, entries, prompts_file
        self.size, self.augment = size, augment
        self.classes = {name: class_infos(entry) for name, entry in entries.items()}
        self.cache = VolumeLRU(cache_bytes)

    def groups(self) -> list[list[int]]:
        """Indices of the items of each volume, in order of first appearance."""
        by_case: dict[str, list[int]] = {}
        for index, item in enumerate(self.items):
            by_case.setdefault(item.case.case_id, []).append(index)
        return list(by_case.values())

    def _read(self, case: NpzCase) -> tuple[np.ndarray, np.ndarray]:
        """Image and label volumes of a training npz."""
        volume = read_case(case)
        if volume.image is None or volume.label is None:
            msg = f"{case.path} has no 'gts' array; training volumes need their labels"
            raise DataError(msg)
        return volume.image, volume.label

    def __len__(self) -> int:
        return len(self.items)

    def _encode(self, item: SliceItem) -> tuple[torch.Tensor, torch.Tensor]:
        """Image ``[3, S, S]`` and label ``[S, S]`` from the npz."""
        volume, labels = self.cache.get(item.case.path, lambda: self._read(item.case))
        assert item.geometry is not None  # set for every npz item
        image = encode_slice(volume, item.geometry, item.index)
        label = resample_label(labels, item.geometry, [item.index])[0]
        entry = self.entries[item.case.dataset]
        ids = label.unique().tolist()  # the slice's ids: checking the volume's costs a sort
        check_label_ids(ids, item.case.path, item.case.dataset, entry, self.prompts_file)
        return image, label

    def __getitem__(self, index: int) -> Sample:
        """Sample: ``image`` float32 [3, S, S] 0-255, ``label`` int64 [1, S, S], ``spacing`` [2]."""
        item = self.items[index]
        if item.png is None:
            image, label = self._encode(item)
        else:
            mask = item.png.parent.with_name("train_mask") / item.png.name
            image = torch.from_numpy(_read_png(item.png, True, self.size).astype(np.float32))
            label = torch.from_numpy(_read_png(mask, False, self.size).astype(np.int64))
        label = label[None]
        if self.augment is not None:
            image, label = self.augment(image, label)
        entry = self.entries[item.case.dataset]
        return {
            "image": image,
            "label": label,
            "classes": self.classes[item.case.dataset],
            "spacing": torch.tensor(item.spacing, dtype=torch.float32),
            "meta": {
                "case_id": item.case.case_id,
                "dataset": item.case.dataset,
                "source": str(item.png or item.case.path),
                "instance": entry.instance,
                "slice_index": item.index,
                "axis": item.axis,
                "file_name": item.name,
            },
        }


class BiomedParseDataModule(BaseDataModule):
    """BiomedParse v2's training data: 2.5D slices of the CVPR 2025 npz layout, mixed datasets.

    The root holds ``class_prompts.json`` and ``<DATASET>/train/*.npz`` (see
    :mod:`segfm.data.io.npz_cvpr`). Training and validation samples are every slice of every
    exported view of the volumes (:func:`~segfm.transforms.encoding25d.multi_view_axes`),
    encoded as :mod:`segfm.transforms.encoding25d` describes: with ``source="npz"`` on the fly
    from the npz (each volume is decompressed once while it stays in each worker's
    ``cache_volumes_mb``), with ``source="processed"`` read from the PNGs of
    ``python -m data_tools.process_2d`` (``<DATASET>/processed*/``, listed by their
    ``train.json``); both give the same pixels. Volumes, not slices, are split into train and
    validation (``val_ratio``).

    Slice samples: ``image`` float32 [3, S, S] of raw 0-255 values (channels: the slice, the one
    before, the one after; the method normalises), ``label`` int64 [1, S, S] (class ids, or
    instance ids in instance datasets), ``classes`` {id: ClassInfo} of *all* the dataset's
    classes (absent ones serve as negatives; {1: the class} in instance datasets), ``spacing``
    [2] mm of the encoded pixels (1 mm where the npz is missing), ``meta`` {case_id, dataset,
    source, instance, slice_index, axis, file_name (the tool's PNG name)}. Training samples are
    augmented (:class:`~segfm.data.biomedparse_augment.SliceAugment`) when ``augment``.

    ``test`` / ``predict`` yield whole volumes, one per batch, as
    :class:`~segfm.data.NpzDataModule` does: ``image`` float32 [1, D, H, W] 0-255, ``label``
    when known, ``meta`` {file_name, text_prompts, boxes, ...}; from the evaluation folders
    (``<DATASET>/test`` + ``test_mask``, or top-level ``test``), else the validation volumes.

    Args:
        root: Folder with ``class_prompts.json``.
        datasets: Dataset names; ``None`` takes every dataset of ``class_prompts.json``.
        batch_size: Slices per training / validation batch.
        num_workers: Loader processes.
        size: Side of the slices (512 for the released weights).
        val_ratio: Share of the volumes held out for validation (at least one if > 0).
        source: ``npz`` (encode on the fly) or ``processed`` (the tool's PNGs).
        augment: Augment training slices.
        multi_view: Export the extra views of isotropic near-cubic volumes, as the tool does.
        split_seed: Seed of the volume split.
        max_cases: Use at most this many volumes per split (quick runs).
        cache_volumes_mb: Decoded volumes each loading process keeps (least recently used
            dropped first), in MiB; 0 decodes the npz for every slice. Only ``source="npz"``.
        volume_chunk: Training slices handed out together from one volume
            (:class:`~segfm.data.volume_chunks.VolumeChunkSampler`): a worker then decodes a
            volume once per chunk, and a batch mixes ``batch_size / volume_chunk`` volumes. 1
            shuffles slices freely, as the original.
    """

    one_sample_splits = ("test", "predict")

    def __init__(
        self,
        root: str,
        datasets: list[str] | None = None,
        batch_size: int = 8,
        num_workers: int = 2,
        size: int = 512,
        val_ratio: float = 0.1,
        source: Literal["npz", "processed"] = "npz",
        augment: bool = True,
        multi_view: bool = True,
        split_seed: int = 0,
        max_cases: int | None = None,
        cache_volumes_mb: int = 512,
        volume_chunk: int = 1,
    ) -> None:
        super().__init__(root, batch_size, num_workers)
        checks = {
            "size": (size, size >= 1),
            "val_ratio": (val_ratio, 0 <= val_ratio < 1),
            "source": (source, source in ("npz", "processed")),
            "max_cases": (max_cases, max_cases is None or max_cases >= 1),
            "cache_volumes_mb": (cache_volumes_mb, cache_volumes_mb >= 0),
            "volume_chunk": (volume_chunk, volume_chunk >= 1),
        }
        for name, (value, ok) in checks.items():
            if not ok:
                msg = f"invalid {name}: {value!r} (see BiomedParseDataModule's documentation)"
                raise ValueError(msg)
        self.dataset_names = None if datasets is None else list(datasets)
        self.size, self.val_ratio, self.source = size, val_ratio, source
        self.augment, self.multi_view = augment, multi_view
        self.split_seed, self.max_cases = split_seed, max_cases
        self.cache_volumes_mb, self.volume_chunk = cache_volumes_mb, volume_chunk

    @property
    def prompts_file(self) -> Path:
        """The root's ``class_prompts.json``."""
        return self.root / CLASS_PROMPTS

    def _names(self, entries: dict[str, DatasetEntry]) -> list[str]:
        """The selected datasets, each checked to have an entry."""
        names = sorted(entries) if self.dataset_names is None else sorted(set(self.dataset_names))
        for name in names:
            if name not in entries:
                msg = f"dataset {name!r} has no entry in {self.prompts_file}; add one or drop it"
                raise DataError(msg)
        return names

    def _items(self, case: NpzCase, pngs: list[tuple[Path, int, int]] | None) -> list[SliceItem]:
        """Every slice of every view of a volume, or its PNGs ``(path, axis, index)``."""
        geometries: dict[int, Geometry] = {}
        spacing = np.ones(3)
        if case.path.is_file():
            shape = inspect_case(case, need_label=pngs is None)
            spacing = read_case(case, read_image=False, read_label=False).spacing
            axes = multi_view_axes(shape, spacing) if self.multi_view else [slice_axis(shape)]
            geometries = {axis: plan(shape, self.size, axis) for axis in axes}
        if pngs is None:
            return [
                SliceItem(case, a, i, g, _pixel_spacing(g, spacing), None)
                for a, g in geometries.items()
                for i in range(g.num_slices)
            ]
        items = []
        for png, axis, index in pngs:
            if axis and not self.multi_view:
                continue
            geometry = geometries.get(axis)
            pixel = (1.0, 1.0) if geometry is None else _pixel_spacing(geometry, spacing)
            items.append(SliceItem(case, axis, index, geometry, pixel, png))
        return items

    def _processed(self, names: list[str]) -> dict[str, list[tuple[Path, int, int]]]:
        """Case id to its PNGs ``(path, axis, index)``, from every ``processed*/train.json``."""
        listed: dict[str, list[tuple[Path, int, int]]] = {}
        for name in names:
            folders = sorted((self.root / name).glob("processed*/train.json"))
            if not folders:
                msg = (
                    f"{self.root / name} has no processed*/train.json; run python -m "
                    f"data_tools.process_2d --data {self.root} --datasets {name}, or use "
                    "source='npz'"
                )
                raise DataError(msg)
            for json_file in folders:
                fix = "rerun python -m data_tools.process_2d"
                for ann in read_json(json_file, fix).get("annotations", []):
                    match = _PNG_NAME.fullmatch(str(ann.get("file_name", "")))
                    if match is None:
                        msg = f"{json_file} lists {ann.get('file_name')!r}; {fix}"
                        raise DataError(msg)
                    case_id = f"{name}/{match['stem']}"
                    png = json_file.parent / "train" / match[0]
                    axis = int(match["axis"] or 0)
                    listed.setdefault(case_id, []).append((png, axis, int(match["index"])))
        return listed

    def setup(self, stage: str) -> None:
        """Find the volumes and build the datasets of ``stage``.

        Args:
            stage: ``fit``, ``validate``, ``test`` or ``predict``.

        Raises:
            DataError: If the files are inconsistent or a needed split is empty.
        """
        entries = read_class_prompts(self.prompts_file)
        names = self._names(entries)
        training = find_training_cases(self.root, names)
        listed: dict[str, list[tuple[Path, int, int]]] = {}
        if self.source == "processed":
            listed = self._processed(names)
            known = {c.case_id for c in training}
            for case_id in sorted(set(listed) - known):  # PNGs whose npz is gone
                dataset, stem = case_id.split("/", 1)
                training.append(NpzCase(dataset, self.root / dataset / "train" / f"{stem}.npz"))
        by_id = {case.case_id: case for case in training}
        split = {"train": sorted(by_id), "val": []}
        if len(by_id) > 1 and self.val_ratio > 0:
            split = split_cases(list(by_id), self.val_ratio, 0.0, self.split_seed)
        cases = {k: [by_id[i] for i in split[k]][: self.max_cases] for k in ("train", "val")}
        if stage in ("test", "predict"):
            evaluation = find_evaluation_cases(self.root, names, entries)[: self.max_cases]
            for case in evaluation:
                inspect_case(case)
            self.datasets[stage] = NpzVolumeDataset(evaluation or cases["val"], entries)
            if not evaluation and not cases["val"]:
                msg = f"no evaluation volume in {self.root}: add <DATASET>/test (+ test_mask)"
                raise DataError(msg)
            return
        for split_name in ("train", "val") if stage == "fit" else ("val",):
            chosen = cases[split_name]
            if not chosen and (split_name == "train" or stage == "validate"):
                msg = f"no {split_name} volume in {self.root} for {names}: check the root"
                raise DataError(msg)
            items: list[SliceItem] = []
            for case in chosen:
                pngs = listed.get(case.case_id, []) if self.source == "processed" else None
                items += self._items(case, pngs)
            augment = SliceAugment() if self.augment and split_name == "train" else None
            cache = self.cache_volumes_mb * 2**20 if self.source == "npz" else 0
            self.datasets[split_name] = BiomedParseSliceDataset(
                items, entries, self.prompts_file, self.size, augment, cache
            )

    def train_dataloader(self) -> DataLoader[Sample]:
        """Shuffled slices, ``volume_chunk`` at a time from one volume; resumable mid-epoch."""
        dataset = self.datasets.get("train")
        if self.volume_chunk == 1 or not isinstance(dataset, BiomedParseSliceDataset):
            return super().train_dataloader()
        trainer = self.trainer
        replicas, rank = (trainer.world_size, trainer.global_rank) if trainer else (1, 0)
        order = VolumeChunkSampler(
            dataset, dataset.groups(), self.volume_chunk, global_seed(), replicas, rank
        )
        return ResumableDataLoader(
            dataset,
            order=order,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            collate_fn=collate,
            persistent_workers=self.num_workers > 0,
        )
