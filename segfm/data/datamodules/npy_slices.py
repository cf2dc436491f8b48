"""Data module of MedSAM's preprocessed npy slices (``python -m data_tools.pre_ct_mr``)."""

from __future__ import annotations

from segfm.data.base import BaseDataModule
from segfm.data.io.checks import Report
from segfm.data.io.npy_slices import index_slices, read_geometry, read_label_names
from segfm.data.io.npy_slices_checks import check_npy_slices_root
from segfm.data.npy_datasets import NpySliceDataset, NpyVolumeDataset
from segfm.data.splits import read_split_file, split_cases
from segfm.errors import DataError
from segfm.sample import ClassInfo


class NpySliceDataModule(BaseDataModule):
    """2D slices for training and validation, whole case volumes for test and predict.

    The root holds ``imgs/<case>-NNN.npy``, ``gts/<case>-NNN.npy``, optionally
    ``npz/<case>.npz`` and ``labels.json`` (see :mod:`segfm.data.io.npy_slices`).

    Samples of ``fit`` / ``validate``: ``image`` float32 [3, H, W] in [0, 1], ``label`` int64
    [1, H, W], ``spacing`` [2] (pixel size in mm of the returned slice, from the case npz; ones
    without it), ``classes`` (from ``labels.json``, else empty), ``meta`` {case_id, dataset,
    slice_index, path}. Samples of ``test`` / ``predict`` (one per batch): the test cases' npz
    volumes at their source resolution, ``image`` float32 [1, D, H, W] in [0, 1], ``label``
    [1, D, H, W], ``spacing`` [3] (z, y, x), ``meta`` {case_id, dataset, affine (4 x 4 float64 of
    the source NIfTI), source, shape}.

    Cases, not slices, are split: a random slice split (as in MedSAM's Ascend port) leaks the
    neighbours of training slices, nearly identical to them, into validation and test.

    Args:
        root: Folder written by ``python -m data_tools.pre_ct_mr``.
        batch_size: Slices per training / validation batch.
        num_workers: Loader processes.
        image_size: Resize slices to this side if stored at another (so a 1024 px set feeds a
            256 px model); ``None`` keeps the stored size.
        val_fraction: Share of cases for validation (at least one if > 0).
        test_fraction: Share of cases for test (at least one if > 0).
        split_seed: Seed of the random case split.
        split_file: JSON ``{"train": [...], "val": [...], "test": [...]}`` of case ids (file
            stems before ``-NNN``, e.g. ``CT_synth_000``); replaces the fractions.
    """

    one_sample_splits = ("test", "predict")

    def __init__(
        self,
        root: str,
        batch_size: int = 8,
        num_workers: int = 2,
        image_size: int | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        split_seed: int = 0,
        split_file: str | None = None,
    ) -> None:
        super().__init__(root, batch_size, num_workers)
        if image_size is not None and image_size < 1:
            msg = f"image_size must be >= 1 or None, got {image_size}"
            raise ValueError(msg)
        for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not 0 <= value < 1:
                msg = f"{name} must be in [0, 1), got {value}"
                raise ValueError(msg)
        if val_fraction + test_fraction >= 1:
            msg = f"val_fraction + test_fraction must be < 1, got {val_fraction + test_fraction}"
            raise ValueError(msg)
        self.image_size = image_size
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.split_seed, self.split_file = split_seed, split_file

    def setup(self, stage: str) -> None:
        """Index the root and build the datasets of ``stage``.

        Args:
            stage: ``fit``, ``validate``, ``test`` or ``predict``.

        Raises:
            DataError: If the files are inconsistent or a needed split has no case.
        """
        index = index_slices(self.root)
        if self.split_file is not None:
            splits = read_split_file(self.split_file, list(index))
        else:
            splits = split_cases(
                list(index), self.val_fraction, self.test_fraction, self.split_seed
            )
        classes = {i: ClassInfo(name) for i, name in read_label_names(self.root).items()}
        if stage in ("test", "predict"):
            if not splits["test"]:
                msg = f"no test case in {self.root}: raise test_fraction or fill the split_file"
                raise DataError(msg)
            paths = [self.root / "npz" / f"{case}.npz" for case in splits["test"]]
            for path in paths:
                read_geometry(path)  # fail now, naming the file, rather than mid-run
            self.datasets[stage] = NpyVolumeDataset(paths, classes)
            return
        if stage == "fit" and not splits["train"]:
            msg = f"no train case in {self.root}: fill 'train' in the split_file"
            raise DataError(msg)
        for split in ("train", "val") if stage == "fit" else ("val",):
            npz = {case: self.root / "npz" / f"{case}.npz" for case in splits[split]}
            geometry = {case: read_geometry(p) for case, p in npz.items() if p.is_file()}
            slices = [files for case in splits[split] for files in index[case]]
            self.datasets[split] = NpySliceDataset(slices, geometry, classes, self.image_size)
            if split == "val" and geometry:  # the protocol's cases during fit
                paths = [npz[case] for case in geometry]
                self.datasets["val_volumes"] = NpyVolumeDataset(paths, classes)

    def check_files(self, report: Report, max_cases: int | None) -> None:
        """Check slice pairs, case volumes and label values against ``labels.json``."""
        check_npy_slices_root(report, self.root, max_cases)
