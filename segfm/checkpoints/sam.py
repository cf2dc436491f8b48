"""SAM-family checkpoints: official files in, official files out.

Official SAM files are flat state dicts with the keys of :class:`segfm.models.Sam`. Training
frameworks wrap them: MedSAM saves ``{"model": {"module.image_encoder...": ...}, ...}``,
SAM-Med3D ``{"model_state_dict": ...}``, Lightning ``{"state_dict": {"model.image_encoder...":
...}}``.
:func:`load_official` reads any of these as the flat official dict; :func:`save_official` writes
exactly that, loadable by segment-anything's ``sam_model_registry[...](checkpoint=...)``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from segfm.checkpoints.io import load_file, save_file
from segfm.checkpoints.state_dicts import WRAPPER_KEYS, find_tensors, load_strict, prefix_before
from segfm.errors import CheckpointError

NETWORK_PARTS = ("image_encoder.", "prompt_encoder.", "mask_decoder.")
# Buffers some files carry but SAM does not persist.
STALE_BUFFERS = ("position_ids", "pixel_mean", "pixel_std")


def unwrap_state_dict(obj: Any, source: str = "checkpoint") -> dict[str, Tensor]:
    """The flat official SAM state dict inside a loaded checkpoint object.

    Handles plain state dicts, official SAM files, MedSAM (``model`` + ``module.`` prefix),
    SAM-Med3D (``model_state_dict``) and Lightning (``state_dict`` + ``model.`` prefix); drops
    entries of other modules and stale buffers (``position_ids``, ``pixel_mean``, ``pixel_std``).

    Args:
        obj: What :func:`segfm.checkpoints.io.load_file` returned, or a state dict.
        source: Name of the origin, used in error messages (e.g. the file path).

    Returns:
        ``{official key: tensor}`` in the stored order.

    Raises:
        CheckpointError: If no SAM weights are found, or several networks are stored.
    """
    tensors = find_tensors(obj)
    if tensors is None:
        keys = list(obj)[:5] if isinstance(obj, Mapping) else type(obj).__name__
        msg = (
            f"{source}: no state dict found (top level: {keys}); expected a state dict or a dict "
            f"with one of {list(WRAPPER_KEYS)}"
        )
        raise CheckpointError(msg)
    prefixes = {p for k in tensors if (p := prefix_before(k, NETWORK_PARTS)) is not None}
    if not prefixes:
        parts = " / ".join(NETWORK_PARTS)
        msg = f"{source}: no SAM weights (no key contains {parts}); is this a SAM checkpoint?"
        raise CheckpointError(msg)
    if len(prefixes) > 1:
        msg = (
            f"{source}: holds several SAM networks (key prefixes {sorted(prefixes)}); "
            "extract one state dict first"
        )
        raise CheckpointError(msg)
    prefix = prefixes.pop()
    out: dict[str, Tensor] = {}
    for key, value in tensors.items():
        if not key.startswith(prefix) or not isinstance(value, Tensor):
            continue
        name = key[len(prefix) :]
        if name.rsplit(".", 1)[-1] in STALE_BUFFERS:
            continue
        out[name] = value
    return out


def load_official(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Read a SAM / MedSAM / SAM-Med3D / segfm checkpoint as the flat official state dict.

    Args:
        path: Checkpoint file.

    Returns:
        ``{official key: tensor}`` on the CPU.

    Raises:
        CheckpointError: If the file cannot be read safely or holds no SAM weights.
    """
    return unwrap_state_dict(load_file(path), source=str(path))


def plain_tensor(t: Tensor) -> Tensor:
    """A detached CPU tensor owning exactly its own data (no views of larger storages)."""
    t = t.detach().cpu()
    if not t.is_contiguous() or t.untyped_storage().nbytes() != t.numel() * t.element_size():
        t = t.clone(memory_format=torch.contiguous_format)
    return t


def save_official(
    model_or_state_dict: nn.Module | Mapping[str, Any], path: str | os.PathLike[str]
) -> Path:
    """Write the official SAM file: a flat state dict with the released checkpoints' keys.

    The inverse of :func:`load_official`: saving what it returned reproduces every tensor bit
    for bit, and segment-anything's ``sam_model_registry["vit_b"](checkpoint=path)`` loads the
    file. Written atomically.

    Args:
        model_or_state_dict: A :class:`segfm.models.Sam`, a module holding one (prefixes such as
            ``model.`` are removed), or a state dict in any form :func:`unwrap_state_dict` reads.
        path: Destination file.

    Returns:
        ``path``.

    Raises:
        CheckpointError: If no SAM weights are found or the file cannot be written.
    """
    flat, _ = official_weights(model_or_state_dict)
    return save_file(flat, path)


def official_weights(
    model_or_state_dict: nn.Module | Mapping[str, Any],
) -> tuple[dict[str, Tensor], str]:
    """The flat official state dict of a network or checkpoint, as plain CPU tensors.

    Args:
        model_or_state_dict: A network, a module holding one, or a state dict in any form
            :func:`unwrap_state_dict` reads.

    Returns:
        ``{official key: tensor}`` (each tensor owning exactly its data) and a name of the
        origin for error messages.
    """
    if isinstance(model_or_state_dict, nn.Module):
        state_dict: Any = model_or_state_dict.state_dict()
        source = type(model_or_state_dict).__name__
    else:
        state_dict, source = model_or_state_dict, "state dict"
    flat = unwrap_state_dict(state_dict, source=source)
    return {k: plain_tensor(v) for k, v in flat.items()}, source


def load_into(
    model: nn.Module, path_or_state_dict: str | os.PathLike[str] | Mapping[str, Any]
) -> None:
    """Load SAM weights into ``model`` strictly, explaining any mismatch in one line.

    Args:
        model: The network (e.g. built by :func:`segfm.models.build_sam`).
        path_or_state_dict: A checkpoint file, or a loaded checkpoint object / state dict.

    Raises:
        CheckpointError: If the file cannot be read, or its keys or shapes differ from the
            network's (with the numbers of missing, unexpected and misshaped entries and the
            first few names).
    """
    if isinstance(path_or_state_dict, str | os.PathLike):
        source = str(path_or_state_dict)
        state_dict = load_official(path_or_state_dict)
    else:
        source = "state dict"
        state_dict = unwrap_state_dict(path_or_state_dict, source=source)
    load_strict(
        model,
        state_dict,
        source,
        "build the network with the checkpoint's architecture and image size",
    )
