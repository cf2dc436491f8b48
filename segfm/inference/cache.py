"""A cache of image embeddings for the volume being segmented.

Interactive inference comes back to the same volume at every step (a box, then click after
click); only the decoder needs to run again. The cache keeps the embeddings of one volume, for
as long as that tensor object lives, is not modified in place and the network's weights do not
change.
"""

from __future__ import annotations

import weakref
from collections.abc import Hashable
from typing import Any

from torch import Tensor, nn


class EmbeddingCache:
    """Embeddings of the last volume seen, by key (a slice index, a set of windows, ...).

    The volume is held by a weak reference, so a new volume never matches a freed one that
    happened to share its ``id``.
    """

    def __init__(self) -> None:
        self._volume: weakref.ref[Tensor] | None = None
        self._version: tuple[int, int, int] | None = None
        self._store: dict[Hashable, Tensor] = {}

    def store(self, volume: Tensor, network: nn.Module) -> dict[Hashable, Tensor]:
        """The embeddings kept for ``volume`` under ``network``'s current weights.

        Args:
            volume: The volume being segmented.
            network: The network that encodes it.

        Returns:
            A dict to read and fill; a fresh one when the volume, its in-place version or the
            weights changed since the last call.
        """
        weights = sum(p._version for p in network.parameters())
        # inference tensors (Lightning's test loop) have no version counter
        version = (0 if volume.is_inference() else volume._version, id(network), weights)
        if self._volume is None or self._volume() is not volume or self._version != version:
            self._volume = weakref.ref(volume)
            self._version = version
            self._store = {}
        return self._store

    def entries(self) -> dict[Hashable, Tensor]:
        """The embeddings kept now (of the last volume seen), by key."""
        return dict(self._store)

    def restore(self, volume: Tensor, network: nn.Module, entries: dict[Hashable, Tensor]) -> None:
        """Keep ``entries`` as the embeddings of ``volume`` under ``network``'s weights.

        For a process that segments the same volume as an earlier one (the challenge runs a
        fresh process per interaction step): the caller vouches that the entries were computed
        from an equal volume with equal weights.
        """
        self.store(volume, network).update(entries)

    def clear(self) -> None:
        """Forget every embedding."""
        self._volume, self._version, self._store = None, None, {}

    def __getstate__(self) -> dict[str, Any]:
        """An empty cache when pickled or deep-copied (a weak reference cannot be)."""
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Restore as empty."""
        self.clear()
