"""Data module of nnU-Net v2 raw datasets as 3D volumes (SAM-Med3D on nnU-Net data)."""

from __future__ import annotations

from pathlib import Path

from segfm.data.datamodules.volumes import Splits, VolumeDataModule
from segfm.data.io.checks import Report
from segfm.data.io.nnunet import (
    channel_names,
    find_cases,
    find_images,
    label_names,
    read_dataset_json,
    read_fold,
)
from segfm.data.io.nnunet_checks import check_nnunet_root
from segfm.data.splits import read_split_file, split_cases
from segfm.data.volume_cache import VolumeItem
from segfm.sample import ClassInfo


def _has_files(folder: Path) -> bool:
    """Whether ``folder`` exists and holds a visible file (empty ``imagesTs`` count as absent)."""
    return folder.is_dir() and any(not p.name.startswith(".") for p in folder.iterdir())


class NnUNetDataModule(VolumeDataModule):
    """An nnU-Net raw dataset (``dataset.json``, ``imagesTr``, ``labelsTr``, ``imagesTs`` ...).

    Samples and preprocessing as in :class:`~segfm.data.VolumeDataModule`; class names
    from ``dataset.json``'s ``labels``, CT clamping when its channel 0 is named ``CT``.

    Splits: ``fold`` takes train / val from ``<root>/splits_final.json``; otherwise ``split_file``
    or a random split of ``imagesTr`` by ``val_fraction`` / ``test_fraction``. Test cases are
    ``imagesTs`` + ``labelsTs`` when ``labelsTs`` exists (``imagesTr`` then gives no test
    cases), else the held-out test cases of ``imagesTr`` (none with ``fold``). Predict cases are
    ``imagesTs`` when present (with labels if ``labelsTs`` has them), else the test cases.

    Args:
        root: nnU-Net raw dataset folder (``Dataset001_X``).
        batch_size: Patches per training / validation batch.
        num_workers: Loader processes, and processes that fill the cache in ``setup``.
        patch_size: Side of the training / validation patches in voxels.
        spacing: Isotropic voxel side in mm after resampling; ``None`` keeps the native grid.
        intensity_range: Clamp intensities to ``(low, high)``; ``None``: CT to (-1000, 1000).
        rescale: Map the clamp range (without one: each volume's min and max) to [0, 1].
        zscore: Z-score each sample over its voxels > 0.
        flips: Random flips of training patches.
        crop_jitter: Largest random shift, in voxels per axis, of training crops.
        fold: Fold of ``splits_final.json`` to train and validate on.
        val_fraction: Share of ``imagesTr`` cases for validation (without ``fold``).
        test_fraction: Share of ``imagesTr`` cases for test (without ``fold`` and ``labelsTs``).
        split_seed: Seed of the random case split.
        split_file: JSON ``{"train": [...], "val": [...], "test": [...]}`` of ``imagesTr`` case
            ids; replaces the fractions.
        cache_dir: Cache folder (default ``<root>/.segfm_cache``), one subfolder per setting.
        max_cases: Use at most this many cases per split.
    """

    def __init__(
        self,
        root: str,
        batch_size: int = 2,
        num_workers: int = 2,
        patch_size: int = 128,
        spacing: float | None = 1.5,
        intensity_range: tuple[float, float] | None = None,
        rescale: bool = False,
        zscore: bool = False,
        flips: bool = True,
        crop_jitter: int = 0,
        fold: int | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        split_seed: int = 0,
        split_file: str | None = None,
        cache_dir: str | None = None,
        max_cases: int | None = None,
    ) -> None:
        super().__init__(
            root, batch_size, num_workers, patch_size, spacing, intensity_range, rescale, zscore,
            flips, crop_jitter, val_fraction, test_fraction, split_seed, split_file, cache_dir,
            max_cases,
        )  # fmt: skip
        if fold is not None and fold < 0:
            msg = f"fold must be >= 0 or None, got {fold}"
            raise ValueError(msg)
        self.fold = fold

    def empty_split_hint(self, split: str) -> str:
        """What to do when a needed split has no case."""
        if split == "test" and self.fold is not None:
            return "with fold set, test cases come from imagesTs + labelsTs; add them"
        return super().empty_split_hint(split)

    def find_splits(self) -> tuple[Splits, dict[int, ClassInfo]]:
        """The cases of each split and the classes of ``dataset.json``."""
        root = self.root
        meta = read_dataset_json(root / "dataset.json")
        ending = str(meta.get("file_ending", ".nii.gz"))
        value_range = self.value_range(channel_names(meta).get(0, "").lower() == "ct")

        def item(case: str, image: Path, label: Path | None) -> VolumeItem:
            return VolumeItem(case, root.name, image, label, value_range)

        cases = {c.case_id: c for c in find_cases(root / "imagesTr", root / "labelsTr", ending)}
        ts_labelled = _has_files(root / "labelsTs")
        if self.fold is not None:
            ids = read_fold(root / "splits_final.json", self.fold, list(cases))
        elif self.split_file is not None:
            ids = read_split_file(self.split_file, list(cases))
        else:
            test_fraction = 0 if ts_labelled else self.test_fraction
            ids = split_cases(list(cases), self.val_fraction, test_fraction, self.split_seed)
        splits = {
            s: [item(c, cases[c].image, cases[c].label) for c in ids.get(s, [])]
            for s in ("train", "val", "test")
        }
        if ts_labelled:
            ts = find_cases(root / "imagesTs", root / "labelsTs", ending)
            splits["test"] = [item(c.case_id, c.image, c.label) for c in ts]
        splits["predict"] = splits["test"]
        if not ts_labelled and _has_files(root / "imagesTs"):
            images = find_images(root / "imagesTs", ending)
            splits["predict"] = [item(c, path, None) for c, path in images.items()]
        classes = {i: ClassInfo(name) for i, name in label_names(meta).items()}
        return splits, classes

    def check_files(self, report: Report, max_cases: int | None) -> None:
        """Check ``dataset.json``, every channel and label, their grids, and the split file."""
        check_nnunet_root(report, self.root, max_cases)
