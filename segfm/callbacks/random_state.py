"""Callback keeping the random generators in checkpoints, so a resumed fit draws as the first."""

from __future__ import annotations

import random
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn

#: checkpoint key holding one entry per process (global rank order)
KEY = "random_states"


def collect_random_states(device: torch.device) -> dict[str, Any]:
    """The global generators of Python, numpy, torch and ``device`` (tensors and plain data).

    numpy's key array is stored as a tensor, so checkpoints still load with
    ``torch.load(weights_only=True)``.
    """
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    states: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
        "torch": torch.get_rng_state(),
    }
    if device.type != "cpu":
        states[device.type] = torch.get_device_module(device.type).get_rng_state(device)
    return states


def set_random_states(states: dict[str, Any], device: torch.device) -> None:
    """Restore what :func:`collect_random_states` returned."""
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if device.type != "cpu" and device.type in states:
        torch.get_device_module(device.type).set_rng_state(states[device.type], device)


class RandomStateCheckpoint(Callback):
    """Save every process's random generators in each checkpoint; restore them on resume.

    Lightning restores weights, optimisers, schedulers and loop counters but not the global
    generators, which draw the prompts and box jitter of the methods; a resumed fit would then
    draw differently from the uninterrupted one. (segfm's training loader,
    :class:`~segfm.data.loaders.ResumableDataLoader`, draws its order and each sample's
    augmentation from the seed, the epoch and the sample instead, and keeps its place in the
    checkpoint.) A resume with another number of processes keeps the fresh generators (with a
    warning).
    """

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Store the generators of all processes (every rank takes part)."""
        mine = collect_random_states(trainer.strategy.root_device)
        if trainer.world_size > 1 and torch.distributed.is_initialized():
            gathered: list[Any] = [None] * trainer.world_size
            torch.distributed.all_gather_object(gathered, mine)
            checkpoint[KEY] = gathered
        else:
            checkpoint[KEY] = [mine]

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Restore this process's generators, when the checkpoint has them."""
        states = checkpoint.get(KEY)
        if not states:
            return
        if len(states) != trainer.world_size:
            rank_zero_warn(
                f"the checkpoint holds random states of {len(states)} processes, this run has "
                f"{trainer.world_size}: fresh ones are used, so the data order and prompts differ"
            )
            return
        set_random_states(states[trainer.global_rank], trainer.strategy.root_device)
