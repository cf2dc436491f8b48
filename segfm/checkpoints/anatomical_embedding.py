"""SAM / SAM++ / Cross-SAM anatomical embedding checkpoints: mmcv files in, mmcv files out.

The released files (``SAM.pth``, ``SAMv2_iter_20000.pth``, ``CrossSAM_iter_20000_ct_mr_inter_1
.pth``) were written by mmcv's ``save_checkpoint``: ``{"meta": {...}, "state_dict": {...},
"optimizer": {...}}`` with the network's keys (``backbone.*``, ``neck.*``, ``read_out_head.*``,
``semantic_head.*``) and no ``module.`` prefix. :func:`load_official` reads that layout, plain
state dicts, DDP-prefixed ones and segfm's Lightning checkpoints (``model.`` prefix) without
running pickled code. :func:`save_official` writes ``{"meta": meta, "state_dict": weights}``,
which mmcv's ``load_checkpoint`` (the original ``--resume-from`` / ``load_from`` / test
scripts) reads; the optimiser state is left out (segfm's optimiser state is not mmcv's).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from segfm.checkpoints.io import load_file, save_file
from segfm.checkpoints.sam import plain_tensor
from segfm.checkpoints.state_dicts import find_tensors, load_strict, prefix_before
from segfm.errors import CheckpointError
from segfm.models.anatomical_embedding.build import build_embedding_model

__all__ = [
    "PARTS",
    "load_embedding_model",
    "load_into",
    "load_official",
    "save_official",
    "unwrap_state_dict",
]

#: top-level sub-networks of the released files
PARTS = ("backbone.", "neck.", "read_out_head.", "semantic_head.")


def _prefix(key: str) -> str | None:
    return prefix_before(key, PARTS)


def unwrap_state_dict(obj: Any, source: str = "checkpoint") -> dict[str, Tensor]:
    """The network's flat state dict inside a loaded checkpoint object.

    Args:
        obj: A loaded checkpoint (mmcv, Lightning, plain) or a state dict.
        source: Origin named in errors.

    Returns:
        ``{official key: tensor}`` in the stored order.

    Raises:
        CheckpointError: If no anatomical embedding weights (``backbone.*`` ...) are found.
    """
    tensors = find_tensors(obj)
    prefixes = {p for p in map(_prefix, tensors or {}) if p is not None}
    if tensors is None or not prefixes or ("" not in prefixes and len(prefixes) > 1):
        msg = (
            f"{source}: no SAM / SAM++ / Cross-SAM embedding weights (keys starting with "
            f"{', '.join(PARTS)}); is this an anatomical embedding checkpoint?"
        )
        raise CheckpointError(msg)
    prefix = "" if "" in prefixes else prefixes.pop()
    return {
        k[len(prefix) :]: v
        for k, v in tensors.items()
        if k.startswith(prefix) and isinstance(v, Tensor) and _prefix(k) == prefix
    }


def load_official(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Read a released (mmcv) or segfm checkpoint as the flat official state dict.

    Args:
        path: Checkpoint file (e.g. ``SAM.pth``).

    Returns:
        ``{official key: tensor}`` on the CPU.

    Raises:
        CheckpointError: If the file cannot be read safely or holds no embedding weights.
    """
    return unwrap_state_dict(load_file(path), source=str(path))


def save_official(
    model_or_state_dict: nn.Module | Mapping[str, Any],
    path: str | os.PathLike[str],
    meta: Mapping[str, Any] | None = None,
) -> Path:
    """Write the mmcv layout ``{"meta", "state_dict"}`` of the released files, atomically.

    The inverse of :func:`load_official`: saving what it returned reproduces every tensor bit
    for bit.

    Args:
        model_or_state_dict: The network, a module holding it (a ``model.`` prefix is removed),
            or a state dict in any form :func:`unwrap_state_dict` reads.
        path: Destination file.
        meta: Plain data stored as ``meta`` (default ``{"source": "segfm"}``).

    Returns:
        ``path``.
    """
    if isinstance(model_or_state_dict, nn.Module):
        state: Any = model_or_state_dict.state_dict()
        source = type(model_or_state_dict).__name__
    else:
        state, source = model_or_state_dict, "state dict"
    weights = {k: plain_tensor(v) for k, v in unwrap_state_dict(state, source).items()}
    payload = {"meta": dict(meta or {"source": "segfm"}), "state_dict": weights}
    return save_file(payload, path)


def load_into(
    model: nn.Module, path_or_state_dict: str | os.PathLike[str] | Mapping[str, Any]
) -> None:
    """Load embedding weights into ``model`` strictly, explaining a mismatch in one line.

    Args:
        model: The network (:func:`segfm.models.anatomical_embedding.build_embedding_model`).
        path_or_state_dict: A checkpoint file or a loaded checkpoint / state dict.

    Raises:
        CheckpointError: If keys or shapes differ (e.g. a SAM++ file into a SAM network: the
            ``arch`` must match the file).
    """
    if isinstance(path_or_state_dict, str | os.PathLike):
        source, state = str(path_or_state_dict), load_official(path_or_state_dict)
    else:
        source, state = "state dict", unwrap_state_dict(path_or_state_dict)
    load_strict(
        model,
        state,
        source,
        "choose the arch of the file (sam for SAM.pth, sam_pp / cross_sam for the files with "
        "semantic_head.*)",
    )


def load_embedding_model(checkpoint: str | os.PathLike[str] | None, arch: str = "sam") -> nn.Module:
    """Build a network and load a checkpoint into it (strict), in eval mode.

    Args:
        checkpoint: Released mmcv file, segfm export or Lightning checkpoint; None keeps the
            random initialisation.
        arch: ``sam``, ``sam_pp``, ``cross_sam``, ``tiny`` or ``tiny_pp``; must match the file.

    Returns:
        The network on the CPU.
    """
    model = build_embedding_model(arch)
    if checkpoint is not None:
        load_into(model, checkpoint)
    return model.eval()
