"""The base of every segfm data module: loaders over per-split datasets."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from lightning.pytorch import LightningDataModule
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset, Sampler

from segfm.data.io.checks import Report
from segfm.data.loaders import ResumableDataLoader
from segfm.errors import ConfigError
from segfm.sample import Sample, collate

_STAGE_OF = {
    "train": "fit",
    "val": "validate",
    "val_volumes": "validate",
    "test": "test",
    "predict": "predict",
}
#: splits whose every case is seen once under DDP (Lightning's validation sampler pads the
#: ranks with repeated cases instead, which keeps the logged scores in step across ranks)
_ONCE_SPLITS = ("test", "predict")


class BaseDataModule(LightningDataModule):
    """Loaders shared by all data formats.

    A subclass fills ``self.datasets[split]`` (``train``, ``val``, ``test``, ``predict``) in
    ``setup(stage)``; this class turns them into loaders that yield batches of the Sample contract
    (:func:`segfm.sample.collate`). A format whose validation samples are crops or slices also
    fills ``val_volumes``: the validation cases as whole volumes, as its test split yields them.
    When the model scores its test protocol during ``fit`` (it sets
    :attr:`protocol_validation`), :meth:`val_dataloader` returns both loaders.

    Args:
        root: Data folder.
        batch_size: Samples per batch (splits in :attr:`one_sample_splits` use 1).
        num_workers: Loader processes; 0 loads in the main process. Workers persist across
            epochs.
    """

    #: splits whose samples differ in size (whole volumes), loaded one sample per batch
    one_sample_splits: ClassVar[tuple[str, ...]] = ()
    #: set by the model: validation also yields ``val_volumes`` (the protocol's cases)
    protocol_validation: bool = False

    def __init__(self, root: str, batch_size: int = 8, num_workers: int = 2) -> None:
        super().__init__()
        if batch_size < 1:
            msg = f"batch_size must be >= 1, got {batch_size}"
            raise ValueError(msg)
        if num_workers < 0:
            msg = f"num_workers must be >= 0, got {num_workers}"
            raise ValueError(msg)
        self.root = Path(root)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.datasets: dict[str, Dataset[Sample]] = {}

    def _dataloader(self, split: str) -> DataLoader[Sample]:
        """A loader over one split (shuffled for ``train``).

        The training loader is a :class:`ResumableDataLoader`: its order is drawn from the seed
        and the epoch (each process its share under DDP), each sample's random draws from the
        seed, the epoch and the sample, and a fit resumed from a checkpoint written in the middle
        of an epoch continues that epoch where it stopped, on one process or many.
        """
        if split not in self.datasets:
            msg = (
                f"{type(self).__name__} has no '{split}' data: run setup('{_STAGE_OF[split]}') "
                "first (the Trainer does) and check that the split has cases"
            )
            raise ConfigError(msg)
        sampler: Sampler[int] | None = None
        trainer = self.trainer
        world_size = 1 if trainer is None else trainer.world_size
        if split in _ONCE_SPLITS and trainer is not None and world_size > 1:
            # every case once: Lightning's own test sampler pads the ranks with repeated cases
            sampler = UnrepeatedDistributedSampler(
                self.datasets[split],  # type: ignore[arg-type]
                num_replicas=world_size,
                rank=trainer.global_rank,
                shuffle=False,
            )
        one = split in self.one_sample_splits or split == "val_volumes"
        batch_size = 1 if one else self.batch_size
        if split == "train":
            return ResumableDataLoader(
                self.datasets[split],
                batch_size=batch_size,
                num_workers=self.num_workers,
                collate_fn=collate,
                persistent_workers=self.num_workers > 0,
                num_replicas=world_size,
                rank=0 if trainer is None else trainer.global_rank,
            )
        return DataLoader(
            self.datasets[split],
            batch_size=batch_size,
            shuffle=split == "train",
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=collate,
            persistent_workers=self.num_workers > 0,
        )

    def _ordered_loader(
        self, dataset: Dataset[Sample], make_order: Callable[[int, int], Sampler[Any]]
    ) -> DataLoader[Sample]:
        """A resumable training loader whose order ``make_order(replicas, rank)`` draws.

        For formats that order training samples themselves (batches from one dataset, a few
        slices of one volume in a row); the order must be drawn from the seed and the epoch.
        """
        trainer = self.trainer
        replicas, rank = (trainer.world_size, trainer.global_rank) if trainer else (1, 0)
        return ResumableDataLoader(
            dataset,
            order=make_order(replicas, rank),
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            collate_fn=collate,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader[Sample]:
        """Loader of the training split (shuffled)."""
        return self._dataloader("train")

    def val_dataloader(self) -> DataLoader[Sample] | list[DataLoader[Sample]]:
        """Loader of the validation split; with :attr:`protocol_validation`, also its volumes.

        Returns:
            The ``val`` loader, or ``[val, val_volumes]`` when the model scores its protocol
            during ``fit`` and the format has validation volumes.
        """
        loader = self._dataloader("val")
        if self.protocol_validation and self.datasets.get("val_volumes") is not None:
            return [loader, self._dataloader("val_volumes")]
        return loader

    def test_dataloader(self) -> DataLoader[Sample]:
        """Loader of the test split."""
        return self._dataloader("test")

    def predict_dataloader(self) -> DataLoader[Sample]:
        """Loader of the prediction split."""
        return self._dataloader("predict")

    def verify(self, max_cases: int | None = None) -> Report:
        """Check every file of the root and list every problem, with its file and fix.

        Nothing is set up, cached or written. The root must be a readable folder; the format's
        own checks (:meth:`check_files`) then read every case with the format's readers.

        Args:
            max_cases: Read at most this many cases per folder (files are always paired in full).

        Returns:
            The report: its ``problems`` (errors are fatal, warnings not) and
            :meth:`~segfm.data.io.checks.Report.text`.
        """
        report = Report(type(self).__name__, str(self.root))
        if not self.root.is_dir():
            report.error(self.root, "does not exist or is not a folder", "give the dataset root")
        elif not os.access(self.root, os.R_OK | os.X_OK):
            report.error(self.root, "cannot be read", "give this user read access to it")
        else:
            self.check_files(report, max_cases)
        return report

    def check_files(self, report: Report, max_cases: int | None) -> None:
        """Record the problems of the root's files (a format overrides this; here: none).

        Args:
            report: Where problems go (``report.checked`` counts the cases read).
            max_cases: Read at most this many cases per folder.
        """
