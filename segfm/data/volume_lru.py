"""A small least-recently-used cache of decoded volumes, bounded by bytes."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence

import numpy as np


class VolumeLRU:
    """Decoded arrays by key, the least recently used dropped first once over ``max_bytes``.

    Meant to live in a dataset, so that each loader worker keeps its own copy (workers get the
    dataset pickled or forked with the cache empty; persistent workers keep theirs across
    epochs). A value larger than the whole budget is returned but not kept.

    Args:
        max_bytes: Budget of the cached arrays' ``nbytes``; 0 caches nothing.
    """

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            msg = f"max_bytes must be >= 0, got {max_bytes}"
            raise ValueError(msg)
        self.max_bytes = max_bytes
        self.nbytes = 0
        self.hits = 0
        self.misses = 0
        self._items: OrderedDict[Hashable, Sequence[np.ndarray]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: Hashable, load: Callable[[], Sequence[np.ndarray]]) -> Sequence[np.ndarray]:
        """The arrays of ``key``, from the cache or from ``load()`` (then cached if they fit).

        Args:
            key: What identifies the arrays (a file path).
            load: Reads them on a miss.

        Returns:
            The arrays (shared with the cache: do not modify them in place).
        """
        if key in self._items:
            self.hits += 1
            self._items.move_to_end(key)
            return self._items[key]
        self.misses += 1
        arrays = load()
        size = sum(a.nbytes for a in arrays)
        if size <= self.max_bytes:
            while self._items and self.nbytes + size > self.max_bytes:
                _, dropped = self._items.popitem(last=False)
                self.nbytes -= sum(a.nbytes for a in dropped)
            self._items[key] = arrays
            self.nbytes += size
        return arrays
