"""A training loader that resumes in the middle of an epoch where it stopped."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sized
from typing import Any, TypeVar

import torch
from torch.utils.data import DataLoader, Sampler

T = TypeVar("T")


def global_seed() -> int:
    """The seed of ``seed_everything`` (``PL_GLOBAL_SEED``), 0 without one.

    Lightning's own distributed sampler shuffles from the same seed.
    """
    return int(os.environ.get("PL_GLOBAL_SEED", 0))


class EpochShuffleSampler(Sampler[int]):
    """Every index once per epoch, in an order drawn from ``seed + epoch`` alone.

    The order does not depend on the global generators, so an epoch can be replayed from its
    number; :meth:`skip` drops the first indices of the next pass (a resumed epoch).

    Args:
        data_source: The dataset (only its length is used).
        seed: Base seed of the orders.
    """

    def __init__(self, data_source: Sized, seed: int = 0) -> None:
        self.data_source = data_source
        self.seed = seed
        self.epoch = 0
        self._skip = 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose order the next pass yields (Lightning calls it each epoch)."""
        self.epoch = epoch

    def skip(self, count: int) -> None:
        """Drop the first ``count`` indices of the next pass only."""
        self._skip = count

    def order(self) -> list[int]:
        """The whole order of the current epoch."""
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        return torch.randperm(len(self.data_source), generator=generator).tolist()

    def __iter__(self) -> Iterator[int]:
        skip, self._skip = self._skip, 0
        return iter(self.order()[skip:])

    def __len__(self) -> int:
        return len(self.data_source)


class _EpochCounting(Sampler[int]):
    """Another sampler, whose epochs (``set_epoch``) also reach an :class:`EpochShuffleSampler`."""

    def __init__(self, sampler: Sampler[int], epochs: EpochShuffleSampler) -> None:
        self.sampler = sampler
        self.epochs = epochs

    def set_epoch(self, epoch: int) -> None:
        """Count the epoch (and pass it on when the sampler takes it)."""
        self.epochs.set_epoch(epoch)
        set_epoch = getattr(self.sampler, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(epoch)

    def __iter__(self) -> Iterator[int]:
        return iter(self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)  # type: ignore[arg-type]


class ResumableDataLoader(DataLoader[T]):
    """A shuffling loader with ``state_dict`` / ``load_state_dict``, so Lightning resumes it.

    Lightning saves the state of loaders that have both methods in each checkpoint
    (``loops.fit_loop.state_dict.combined_loader``) and, on resume, loads it before iterating
    again. The state is the epoch, the seed and the number of batches this loader handed out in
    that epoch; a loaded state makes the next pass of the same epoch skip those batches, by
    index, without loading their samples. The order of an epoch comes from
    :class:`EpochShuffleSampler`, and worker seeds from a generator of the loader's own, so no
    global generator is drawn.

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
        **kwargs: Other :class:`~torch.utils.data.DataLoader` arguments, without ``shuffle``,
            ``batch_sampler`` or ``generator``.
    """

    def __init__(
        self,
        dataset: Any,
        seed: int | None = None,
        sampler: Sampler[int] | None = None,
        **kwargs: Any,
    ) -> None:
        names = ("shuffle", "batch_sampler", "generator")
        taken = sorted(name for name in names if kwargs.get(name))
        if taken:
            msg = f"ResumableDataLoader chooses its own {taken}"
            raise ValueError(msg)
        for name in names:
            kwargs.pop(name, None)
        self.epoch_sampler = EpochShuffleSampler(dataset, global_seed() if seed is None else seed)
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
        sampler.set_epoch(int(state_dict["epoch"]))
        self._resume = (sampler.epoch, int(state_dict["batches"]))
