"""A training order that hands out slices of one volume a few at a time."""

from __future__ import annotations

from collections.abc import Sequence, Sized

import torch

from segfm.data.loaders import EpochShuffleSampler


class VolumeChunkSampler(EpochShuffleSampler):
    """Each epoch: every volume's slices shuffled and cut into chunks, the chunks shuffled.

    Consecutive indices then come ``chunk`` at a time from one volume, so a loader worker (which
    loads a whole batch) decodes a volume once for ``chunk`` slices instead of once per slice,
    while a batch still mixes ``batch_size / chunk`` volumes drawn at random. With ``chunk=1``
    the order is exactly :class:`~segfm.data.loaders.EpochShuffleSampler`'s. Orders come from
    ``seed + epoch`` alone (a resumed epoch replays), and rank ``r`` of ``R`` takes the ``r``-th
    contiguous block of the epoch's order (padded with its first indices to a multiple of
    ``R``), so chunks stay whole within a rank.

    Args:
        data_source: The dataset (only its length is used).
        groups: Dataset indices of each volume (together every index once).
        chunk: Slices of one volume handed out together (best a divisor of the batch size).
        seed: Base seed of the orders.
        num_replicas: Processes sharing the epoch.
        rank: This process's rank.
    """

    def __init__(
        self,
        data_source: Sized,
        groups: Sequence[Sequence[int]],
        chunk: int,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        super().__init__(data_source, seed, num_replicas, rank)
        if chunk < 1:
            msg = f"chunk must be >= 1, got {chunk}"
            raise ValueError(msg)
        self.groups = [list(group) for group in groups if len(group)]
        if sum(len(group) for group in self.groups) != len(data_source):
            msg = f"groups hold {sum(map(len, self.groups))} indices, the data {len(data_source)}"
            raise ValueError(msg)
        self.chunk = chunk

    def order(self) -> list[int]:
        """This rank's whole order of the current epoch."""
        if self.chunk == 1:
            return super().order()
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        chunks = []
        for group in self.groups:
            shuffled = [group[i] for i in torch.randperm(len(group), generator=generator)]
            chunks += [shuffled[i : i + self.chunk] for i in range(0, len(shuffled), self.chunk)]
        order = [i for c in torch.randperm(len(chunks), generator=generator) for i in chunks[c]]
        return self.padded(order)[self.rank * self.num_samples : (self.rank + 1) * self.num_samples]
