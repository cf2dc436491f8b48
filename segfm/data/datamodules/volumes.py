"""The base of the 3D volume data modules (SAM-Med3D's data): cached, resampled, cropped."""

from __future__ import annotations

import warnings
from pathlib import Path

from segfm.data.base import BaseDataModule
from segfm.data.transforms3d import CT_RANGE
from segfm.data.volume_cache import VolumeCache, VolumeItem, cache_key
from segfm.data.volume_datasets import NiftiPatchDataset, NiftiVolumeDataset
from segfm.errors import DataError
from segfm.sample import ClassInfo

Splits = dict[str, list[VolumeItem]]  # train, val, test, predict
_SPLITS_OF = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}


class VolumeDataModule(BaseDataModule):
    """3D patches for training and validation, whole volumes for test and predict.

    Each case is read once (image channel 0 and label), reoriented to canonical (RAS+), clamped
    (``intensity_range``; CT gets SAM-Med3D's -1000..1000 HU), optionally rescaled to [0, 1],
    resampled to ``spacing`` mm (image trilinear, label nearest) and cached on disk
    (:mod:`segfm.data.volume_cache`); ``setup`` builds missing entries with ``num_workers``
    processes, so later epochs and runs never decode NIfTI again.

    Samples of ``fit`` / ``validate``: ``image`` float32 [1, P, P, P] and ``label`` int64
    [1, P, P, P] (every class id of the case) cropped around the bounding box of a random class
    present (train, with jitter and flips) or of the largest one (val); ``classes``; ``spacing``
    float32 [3] (z, y, x); ``meta`` {case_id, dataset, source}. Samples of ``test`` / ``predict``
    (one per batch): the whole volume, ``image`` [1, D, H, W], ``label`` [1, D, H, W] when known,
    and in ``meta`` also ``affine`` (of the cached canonical grid), ``source_affine`` and
    ``source_shape`` (z, y, x): :func:`segfm.data.io.geometry.resample_nearest` with them puts a
    prediction back on the source image's grid.

    Args:
        root: Dataset folder.
        batch_size: Patches per training / validation batch.
        num_workers: Loader processes, and processes that fill the cache in ``setup``.
        patch_size: Side of the training / validation patches in voxels.
        spacing: Isotropic voxel side in mm after resampling; ``None`` keeps the native grid
            (still reoriented to canonical).
        intensity_range: Clamp intensities to ``(low, high)``; ``None`` clamps CT to
            (-1000, 1000) and leaves other images as they are.
        rescale: Map the clamp range (without one: each volume's min and max) to [0, 1].
        zscore: Z-score each sample over its voxels > 0 (SAM-Med3D's ZNormalization); off by
            default, leaving it to the method.
        flips: Random flips on each axis (p = 0.5) of training patches.
        crop_jitter: Largest random shift, in voxels per axis, of training crops.
        val_fraction: Share of cases for validation (at least one if > 0).
        test_fraction: Share of cases for test (at least one if > 0).
        split_seed: Seed of the random case split.
        split_file: JSON ``{"train": [...], "val": [...], "test": [...]}`` of case ids; replaces
            the fractions.
        cache_dir: Cache folder (default ``<root>/.segfm_cache``); entries go to its subfolder
            named by a hash of ``spacing``, ``intensity_range`` and ``rescale``.
        max_cases: Use at most this many cases per split (quick runs).
    """

    one_sample_splits = ("test", "predict")

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
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        split_seed: int = 0,
        split_file: str | None = None,
        cache_dir: str | None = None,
        max_cases: int | None = None,
    ) -> None:
        super().__init__(root, batch_size, num_workers)
        low, high = intensity_range if intensity_range is not None else (0, 1)
        for name, value, ok in (
            ("patch_size", patch_size, patch_size >= 1),
            ("spacing", spacing, spacing is None or spacing > 0),
            ("intensity_range", intensity_range, low < high),
            ("crop_jitter", crop_jitter, crop_jitter >= 0),
            ("val_fraction", val_fraction, 0 <= val_fraction < 1),
            ("test_fraction", test_fraction, 0 <= test_fraction < 1 - val_fraction),
            ("max_cases", max_cases, max_cases is None or max_cases >= 1),
        ):
            if not ok:
                msg = f"invalid {name}: {value!r} (see the data module's documentation)"
                raise ValueError(msg)
        self.patch_size, self.spacing, self.crop_jitter = patch_size, spacing, crop_jitter
        self.intensity_range = None if intensity_range is None else (float(low), float(high))
        self.rescale, self.zscore, self.flips = rescale, zscore, flips
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.split_seed, self.split_file = split_seed, split_file
        self.cache_dir, self.max_cases = cache_dir, max_cases

    def find_splits(self) -> tuple[Splits, dict[int, ClassInfo]]:
        """The cases of each split (``train``, ``val``, ``test``, ``predict``) and the classes.

        Raises:
            DataError: If the files are missing or inconsistent.
        """
        raise NotImplementedError

    def empty_split_hint(self, split: str) -> str:
        """What to do when a needed split has no case."""
        return "lower val_fraction / test_fraction or fill the split_file"

    def value_range(self, is_ct: bool) -> tuple[float, float] | None:
        """The clamp range of an image: ``intensity_range``, else CT's, else none."""
        return self.intensity_range or (CT_RANGE if is_ct else None)

    def open_cache(self) -> VolumeCache:
        """The cache of these settings, checked writable.

        Raises:
            DataError: If its folder cannot be written.
        """
        key = cache_key(self.spacing, self.intensity_range, self.rescale)
        parent = Path(self.cache_dir) if self.cache_dir else self.root / ".segfm_cache"
        cache = VolumeCache(parent / key, self.root, self.spacing, self.rescale)
        cache.check_writable()
        return cache

    def setup(self, stage: str) -> None:
        """Find the cases, fill the cache and build the datasets of ``stage``.

        Args:
            stage: ``fit``, ``validate``, ``test`` or ``predict``.

        Raises:
            DataError: If the files are inconsistent or a needed split has no case.
        """
        splits, classes = self.find_splits()
        cache = self.open_cache()
        for split in _SPLITS_OF.get(stage, (stage,)):
            items = splits[split][: self.max_cases]
            if not items and split != "val":
                msg = f"no {split} case in {self.root}: {self.empty_split_hint(split)}"
                raise DataError(msg)
            metas = cache.prepare(items, self.num_workers)
            if split in self.one_sample_splits:
                self.datasets[split] = NiftiVolumeDataset(items, cache, classes, self.zscore)
                continue
            kept = [item for item, meta in zip(items, metas, strict=True) if meta["classes"]]
            for item in (item for item in items if item not in kept):
                warnings.warn(
                    f"{item.label} has no foreground after resampling; case {item.case_id} is "
                    f"left out of '{split}'",
                    stacklevel=2,
                )
            if split == "train" and not kept:
                msg = f"no training case of {self.root} has foreground; check the labels"
                raise DataError(msg)
            self.datasets[split] = NiftiPatchDataset(
                kept, cache, classes, self.patch_size, split == "train", self.flips,
                self.crop_jitter, self.zscore,
            )  # fmt: skip
            if split == "val" and kept:  # the protocol's cases during fit
                self.datasets["val_volumes"] = NiftiVolumeDataset(kept, cache, classes, self.zscore)
