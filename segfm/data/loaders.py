"""A training loader that resumes in the middle of an epoch where it stopped."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator, Sized
from typing import Any, TypeVar

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, get_worker_info

T = TypeVar("T")


def global_seed() -> int:
    """The seed of ``seed_everything`` (``PL_GLOBAL_SEED``), 0 without one.

    Lightning's own distributed sampler shuffles from the same seed.
    """
    return int(os.environ.get("PL_GLOBAL_SEED", 0))


class EpochShuffleSampler(DistributedSampler):
    """Every index once per epoch, in an order drawn from ``seed + epoch`` alone.

    The order does not depend on the global generators, so an epoch can be replayed from its
    number; :meth:`skip` drops the first indices of the next pass (a resumed epoch). With
    several processes each rank takes every ``num_replicas``-th index of the order, the order
    padded with its first indices to a multiple of ``num_replicas`` (as PyTorch's
    :class:`~torch.utils.data.DistributedSampler`, which this class is, so Lightning leaves it
    in place instead of injecting its own).

    The sampler yields ``(index, epoch)`` keys, which :class:`SeededDataset` turns into the
    sample's own random generators.

    Args:
        data_source: The dataset (only its length is used).
        seed: Base seed of the orders.
        num_replicas: Number of processes sharing the epoch.
        rank: This process's rank.
    """

    def __init__(
        self, data_source: Sized, seed: int = 0, num_replicas: int = 1, rank: int = 0
    ) -> None:
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            msg = f"rank {rank} of {num_replicas} processes is not a valid place"
            raise ValueError(msg)
        # DistributedSampler's own __init__ would ask the process group; set its fields here
        self.dataset = data_source
        self.data_source = data_source
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.shuffle = True
        self.drop_last = False
        self.epoch = 0
        self.num_samples = -(-len(data_source) // num_replicas)
        self.total_size = self.num_samples * num_replicas
        self._skip = 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose order the next pass yields (Lightning calls it each epoch)."""
        self.epoch = epoch

    def skip(self, count: int) -> None:
        """Drop the first ``count`` indices (of this rank) of the next pass only."""
        self._skip = count

    def order(self) -> list[int]:
        """This rank's whole order of the current epoch."""
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        order = self.padded(torch.randperm(len(self.data_source), generator=generator).tolist())
        return order[self.rank : self.total_size : self.num_replicas]

    def padded(self, order: list[int]) -> list[int]:
        """``order`` repeated from its start up to ``total_size`` indices (every rank as many)."""
        if not order:
            return []
        while len(order) < self.total_size:
            order += order[: self.total_size - len(order)]
        return order

    def __iter__(self) -> Iterator[Any]:
        skip, self._skip = self._skip, 0
        epoch = self.epoch
        return iter([(index, epoch) for index in self.order()[skip:]])

    def __len__(self) -> int:
        return self.num_samples


class SeededDataset(Dataset[T]):
    """A dataset whose random draws for a sample depend on the sample alone.

    ``dataset[(index, epoch)]`` loads ``index`` with Python's, numpy's and torch's global
    generators seeded from ``(seed, epoch, index)`` and restored afterwards. Random crops and
    augmentations then come out the same whichever process loads the sample and whatever it
    loaded before: in loader workers, in the main process, and in a fit resumed in the middle
    of an epoch. Plain integer indices pass through unseeded.

    Args:
        dataset: A map-style dataset.
        seed: Base seed of the samples' generators.
    """

    def __init__(self, dataset: Dataset[T], seed: int = 0) -> None:
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> Any:
        # the wrapped dataset's attributes (paths, cases) stay reachable through the loader
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, key: Any) -> T:
        if not isinstance(key, tuple):
            return self.dataset[key]
        index, epoch = key
        entropy = [self.seed, epoch, index]
        if get_worker_info() is not None:  # a loader worker: only samples draw from its generators
            _seed_generators(entropy)
            return self.dataset[index]
        saved = random.getstate(), np.random.get_state(), torch.get_rng_state()
        _seed_generators(entropy)
        try:
            return self.dataset[index]
        finally:
            random.setstate(saved[0])
            np.random.set_state(saved[1])
            torch.set_rng_state(saved[2])


def _seed_generators(entropy: list[int]) -> None:
    """Seed Python's, numpy's and torch's CPU generators from ``entropy``.

    Only torch's CPU generator: ``torch.manual_seed`` also queues the seeding of every
    accelerator, recording a stack trace each time, which costs more than loading a small slice.
    """
    torch.default_generator.manual_seed(int(np.random.SeedSequence(entropy).generate_state(1)[0]))
    np.random.seed(np.random.SeedSequence([*entropy, 1]).generate_state(4))
    random.seed(int(np.random.SeedSequence([*entropy, 2]).generate_state(1)[0]))


class _EpochCounting(Sampler[Any]):
    """Another sampler, whose epochs (``set_epoch``) also reach an :class:`EpochShuffleSampler`.

    Its indices become ``(index, epoch)`` keys of :class:`SeededDataset`.
    """

    def __init__(self, sampler: Sampler[int], epochs: EpochShuffleSampler) -> None:
        self.sampler = sampler
        self.epochs = epochs

    def set_epoch(self, epoch: int) -> None:
        """Count the epoch (and pass it on when the sampler takes it)."""
        self.epochs.set_epoch(epoch)
        set_epoch = getattr(self.sampler, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(epoch)

    def __iter__(self) -> Iterator[Any]:
        epoch = self.epochs.epoch
        return ((index, epoch) for index in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)  # type: ignore[arg-type]


class ResumableDataLoader(DataLoader[T]):
    """A shuffling loader with ``state_dict`` / ``load_state_dict``, so Lightning resumes it.

    Lightning saves the state of loaders that have both methods in each checkpoint
    (``loops.fit_loop.state_dict.combined_loader``) and, on resume, loads it before iterating
    again. The state is the epoch, the seed and the number of batches this loader handed out in
    that epoch; a loaded state makes the next pass of the same epoch skip those batches, by
    index, without loading their samples. The order of an epoch comes from
    :class:`EpochShuffleSampler` (each rank its share under DDP), and the random draws of each
    sample (crops, flips) from :class:`SeededDataset`, so no global generator is drawn and a
    resumed epoch loads the same samples as the interrupted one, in workers or not.

    Iteration starts at the first ``next()``, not at ``iter()``: Lightning creates the iterator
    of a resumed fit before it sets the epoch, and a checkpoint written at the end of an epoch
    must start the next epoch afresh, not skip batches of it.

    The count is of batches handed to the caller. Lightning's fetcher reads ahead only from
    loaders without a length (this one has one), so at a checkpoint the count is the number of
    batches trained in the epoch.

    Args:
        dataset: The training dataset.
        seed: Base seed of the per-epoch orders; ``None`` takes :func:`global_seed`.
        sampler: Leave out for the loader's own :class:`EpochShuffleSampler`. Lightning passes
            one when it rebuilds the loader (``overfit_batches``); a resumed pass over it skips by
            loading the trained batches.
        num_replicas: Processes sharing each epoch (the DDP world size).
        rank: This process's rank.
        order: The sampler deciding each epoch's order, instead of a plain
            :class:`EpochShuffleSampler` over ``dataset`` (its own ``num_replicas`` and ``rank``
            then apply).
        **kwargs: Other :class:`~torch.utils.data.DataLoader` arguments, without ``shuffle``,
            ``batch_sampler`` or ``generator``.
    """

    def __init__(
        self,
        dataset: Any,
        seed: int | None = None,
        sampler: Sampler[int] | None = None,
        num_replicas: int = 1,
        rank: int = 0,
        order: EpochShuffleSampler | None = None,
        **kwargs: Any,
    ) -> None:
        names = ("shuffle", "batch_sampler", "generator")
        taken = sorted(name for name in names if kwargs.get(name))
        if taken:
            msg = f"ResumableDataLoader chooses its own {taken}"
            raise ValueError(msg)
        for name in names:
            kwargs.pop(name, None)
        seed = global_seed() if seed is None else seed
        if not isinstance(dataset, SeededDataset):  # Lightning rebuilds from loader.dataset
            dataset = SeededDataset(dataset, seed)
        if order is None:
            order = EpochShuffleSampler(dataset, seed, num_replicas, rank)
        self.num_replicas, self.rank, self.order = order.num_replicas, order.rank, order
        self.epoch_sampler = order
        if sampler is not None:
            sampler = _EpochCounting(sampler, self.epoch_sampler)
        super().__init__(
            dataset,
            sampler=self.epoch_sampler if sampler is None else sampler,
            generator=torch.Generator(),
            **kwargs,
        )
        self._handed = 0  # batches handed out in the current pass, skipped ones included
        self._pass_epoch = 0  # epoch of the current pass
        self._resume: tuple[int, int] | None = None  # (epoch, batches) of a loaded state

    def __iter__(self) -> Iterator[T]:  # type: ignore[override]
        return self._batches()

    def _batches(self) -> Iterator[T]:
        sampler = self.epoch_sampler
        start = 0
        if self._resume is not None and self._resume[0] == sampler.epoch:
            start = self._resume[1]
        self._resume = None
        by_index = self.sampler is sampler
        if by_index:
            sampler.skip(start * self.batch_size)  # type: ignore[operator]
        self._handed = start
        self._pass_epoch = sampler.epoch
        assert self.generator is not None
        self.generator.manual_seed(sampler.seed + sampler.epoch)  # worker seeds of this epoch
        batches = super().__iter__()
        if not by_index:  # a sampler of Lightning's: load the trained batches and drop them
            for _ in range(start):
                next(batches, None)
        for batch in batches:
            self._handed += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        """Epoch, seed and batches handed out in that epoch."""
        sampler = self.epoch_sampler
        batches = self._handed if self._pass_epoch == sampler.epoch else 0
        return {"epoch": sampler.epoch, "seed": sampler.seed, "batches": batches}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """Continue the saved epoch after its last handed-out batch on the next pass."""
        sampler = self.epoch_sampler
        sampler.seed = int(state_dict["seed"])
        if isinstance(self.dataset, SeededDataset):
            self.dataset.seed = sampler.seed
        sampler.set_epoch(int(state_dict["epoch"]))
        self._resume = (sampler.epoch, int(state_dict["batches"]))
