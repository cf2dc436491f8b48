"""Data module of the 2.5D slice PNGs of data_tools.process_2d (:mod:`segfm.data.io.png_slices`)."""

from __future__ import annotations

import numpy as np

from segfm.data.datamodules.npz import NpzDataModule
from segfm.data.io.checks import Report
from segfm.data.io.npz_cvpr import NpzCase, inspect_case, read_case
from segfm.data.io.png_slices import ListedPng, list_processed
from segfm.data.io.png_slices_checks import check_png_slices
from segfm.data.slices25d_datasets import SliceItem, pixel_spacing
from segfm.transforms.encoding25d import Geometry, multi_view_axes, plan, slice_axis


class PngSliceDataModule(NpzDataModule):
    """2.5D slices read from the PNGs that ``python -m data_tools.process_2d`` wrote.

    The root is a CVPR 2025 npz root (:class:`~segfm.data.NpzDataModule`) whose dataset folders
    also hold ``processed*/train.json`` with ``train/`` and ``train_mask/`` PNGs (see
    :mod:`segfm.data.io.png_slices`). Training and validation samples are the listed slices,
    exactly those ``NpzDataModule(mode="slices25d")`` encodes from the npz on the fly (same
    pixels, same ``meta``); the spacing comes from the npz header (1 mm where the npz is gone).
    Volumes, not slices, are split. ``test`` / ``predict`` yield the npz root's whole
    evaluation volumes, as :class:`~segfm.data.NpzDataModule` does.

    Args:
        root: Folder with ``class_prompts.json``.
        datasets: Dataset names; ``None`` takes every dataset of ``class_prompts.json``.
        batch_size: Slices per training / validation batch.
        num_workers: Loader processes.
        image_size: Side of the PNGs (the tool's ``--size``).
        augment: Augment training slices (:class:`~segfm.data.slice_augment.SliceAugment`).
        multi_view: Use the extra views the tool wrote (``<stem>_view<k>_<iii>.png``).
        val_fraction: Share of the volumes held out for validation (at least one if > 0).
        test_fraction: Share of the volumes held out for test, used only when the root has no
            evaluation folder.
        split_seed: Seed of the volume split.
        split_file: JSON ``{"train": [...], "val": [...], "test": [...]}`` of case ids.
        max_cases: Use at most this many volumes per split (quick runs).
    """

    def __init__(
        self,
        root: str,
        datasets: list[str] | None = None,
        batch_size: int = 8,
        num_workers: int = 2,
        image_size: int = 512,
        augment: bool = True,
        multi_view: bool = True,
        val_fraction: float = 0.1,
        test_fraction: float = 0.0,
        split_seed: int = 0,
        split_file: str | None = None,
        max_cases: int | None = None,
    ) -> None:
        super().__init__(
            root,
            datasets,
            batch_size,
            num_workers,
            mode="slices25d",
            image_size=image_size,
            augment=augment,
            multi_view=multi_view,
            cache_volumes_mb=0,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            split_seed=split_seed,
            split_file=split_file,
            max_cases=max_cases,
        )
        self._listed: dict[str, list[ListedPng]] = {}

    def _training_cases(self, names: list[str]) -> list[NpzCase]:
        """The listed volumes, including those whose npz is gone."""
        self._listed = {}
        for name in names:
            self._listed |= list_processed(self.root, name)
        training = super()._training_cases(names)
        known = {case.case_id for case in training}
        for case_id in sorted(set(self._listed) - known):
            dataset, stem = case_id.split("/", 1)
            training.append(NpzCase(dataset, self.root / dataset / "train" / f"{stem}.npz"))
        return training

    def _slice_items(self, case: NpzCase) -> list[SliceItem]:
        """The volume's listed PNGs, with the geometry of its npz when it is there."""
        geometries: dict[int, Geometry] = {}
        spacing = np.ones(3)
        if case.path.is_file():
            shape = inspect_case(case)
            spacing = read_case(case, read_image=False, read_label=False).spacing
            axes = multi_view_axes(shape, spacing) if self.multi_view else [slice_axis(shape)]
            geometries = {axis: plan(shape, self.image_size, axis) for axis in axes}
        items = []
        for png, axis, index in self._listed.get(case.case_id, []):
            if axis and not self.multi_view:
                continue
            geometry = geometries.get(axis)
            pixel = (1.0, 1.0) if geometry is None else pixel_spacing(geometry, spacing)
            items.append(SliceItem(case, axis, index, geometry, pixel, png))
        return items

    def check_files(self, report: Report, max_cases: int | None) -> None:
        """Check the npz root, then every listed PNG and its mask (see ``verify``)."""
        super().check_files(report, max_cases)
        check_png_slices(report, self.root, self.dataset_names, self.image_size, max_cases)
