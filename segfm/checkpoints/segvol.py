"""SegVol checkpoints: ``SegVol_v1.pth`` and the Hugging Face file in, ``SegVol_v1.pth`` out.

SegVol's ``train.py`` saves (and the released ``SegVol_v1.pth`` is) ``{"model", "optimizer",
"epoch", "scheduler"}`` with the DistributedDataParallel state dict of the network in ``model``:
its 474 keys prefixed ``module.``. Files written with transformers 4.18 also carry the stale
buffer ``text_encoder.clip_text_model.text_model.embeddings.position_ids`` (not persisted by
later versions). The Hugging Face release (``BAAI/SegVol``, ``pytorch_model.bin``) is a flat state
dict of the same keys prefixed ``model.``.

:func:`load_official` reads any of these (and segfm's Lightning checkpoints) as the flat
474-key dict; :func:`save_official` writes ``{"model": {"module." + key: tensor}, "epoch"}``,
which SegVol's ``inference_demo.py`` and ``train.py --resume``-style loading
(``load_state_dict(checkpoint["model"])`` on the DDP-wrapped network) read. The optimiser and
scheduler states are left out: segfm's optimiser is not SegVol's, so no faithful state exists.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from segfm.checkpoints.io import load_file, save_file
from segfm.checkpoints.sam import load_into, official_weights, unwrap_state_dict
from segfm.errors import CheckpointError

__all__ = ["DDP_PREFIX", "SEGVOL_KEY", "load_into", "load_official", "save_official"]

#: prefix of every key in ``SegVol_v1.pth`` (DistributedDataParallel's ``module``)
DDP_PREFIX = "module."
#: a key only SegVol has among the SAM family (the decoder's text-similarity projection)
SEGVOL_KEY = "mask_decoder.txt_align_upscaled_embedding.weight"


def _check_segvol(state_dict: Mapping[str, Tensor], source: str) -> None:
    """Refuse state dicts that are not a SegVol network."""
    if SEGVOL_KEY not in state_dict:
        msg = (
            f"{source}: not a SegVol network ({SEGVOL_KEY} is missing); for SAM, MedSAM or "
            "SAM-Med3D files use --format sam / sam_med3d"
        )
        raise CheckpointError(msg)


def load_official(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Read a SegVol checkpoint as its flat state dict, without running pickled code.

    Args:
        path: ``SegVol_v1.pth`` (``{"model": {"module.<key>": ...}, "epoch", ...}``), the
            Hugging Face ``pytorch_model.bin`` (``{"model.<key>": ...}``), a file written by
            :func:`save_official`, a plain state dict or a segfm Lightning checkpoint.

    Returns:
        ``{official key: tensor}`` on the CPU, prefixes removed and the stale ``position_ids``
        buffer dropped.

    Raises:
        CheckpointError: If the file is missing, corrupt or unsafe, or holds no SegVol weights.
    """
    state_dict = unwrap_state_dict(load_file(path), source=str(path))
    _check_segvol(state_dict, str(path))
    return state_dict


def save_official(
    model_or_state_dict: nn.Module | Mapping[str, Any],
    path: str | os.PathLike[str],
    epoch: int = 0,
) -> Path:
    """Write the ``SegVol_v1.pth`` layout ``{"model": {"module.<key>": tensor}, "epoch"}``.

    The exact inverse of :func:`load_official`: loading the file gives back every tensor bit for
    bit. Written atomically.

    Args:
        model_or_state_dict: A :class:`segfm.models.segvol.SegVol`, a module holding one
            (prefixes such as ``model.`` are removed), or a state dict in any layout
            :func:`load_official` reads.
        path: Destination file.
        epoch: Stored as ``epoch`` (SegVol stores the index of the last finished epoch).

    Returns:
        ``path``.

    Raises:
        CheckpointError: If no SegVol weights are found or the file cannot be written.
        ValueError: If ``epoch`` is negative.
    """
    if epoch < 0:
        msg = f"epoch must be >= 0, got {epoch}"
        raise ValueError(msg)
    weights, source = official_weights(model_or_state_dict)
    _check_segvol(weights, source)
    payload = {"model": {DDP_PREFIX + k: v for k, v in weights.items()}, "epoch": int(epoch)}
    return save_file(payload, path)
