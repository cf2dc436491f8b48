"""BiomedParse v2 checkpoints: the released Lightning file in, the same layout out.

``biomedparse_v2.ckpt`` is a Lightning checkpoint of the original training module: its
``state_dict`` holds the network under ``model.`` plus two buffers of the training loss
(``model.loss_function.loss_fn.dice_loss.class_weight`` and
``model.loss_function.cls_loss_fn.pos_weight``), which the original loader drops. The 1050
remaining entries are :func:`segfm.models.biomedparse.biomedparse_v2`'s state dict, so it loads
strictly.

:func:`save_official` writes ``{"state_dict": {"model." + key: tensor}}``: what the original
``BiomedParseModel.load_pretrained`` reads (it strips ``model.`` and loads). The loss buffers,
optimizer and loop state of a Lightning file are not written (segfm's loss holds no buffers, and
the original's loader ignores them); :func:`load_official` reads back every tensor bit for bit.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from segfm.checkpoints.io import load_file, save_file
from segfm.checkpoints.state_dicts import load_strict
from segfm.errors import CheckpointError

__all__ = ["LOSS_BUFFERS", "PREFIX", "load_into", "load_official", "save_official"]

PREFIX = "model."
#: training-loss buffers stored in the released file, not part of the network
LOSS_BUFFERS = (
    "loss_function.loss_fn.dice_loss.class_weight",
    "loss_function.cls_loss_fn.pos_weight",
)
# a key every BiomedParse network has, to recognise files of other families
_MARKER = "sem_seg_head.predictor.query_feat_.weight"


def _flat(obj: Any, source: str) -> dict[str, Tensor]:
    """The network entries of a loaded file: unwrapped, prefix removed, loss buffers dropped."""
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        msg = f"{source}: holds no state dict; expected a BiomedParse .ckpt or state dict"
        raise CheckpointError(msg)
    out = {(k[len(PREFIX) :] if k.startswith(PREFIX) else k): v for k, v in obj.items()}
    for name in LOSS_BUFFERS:
        out.pop(name, None)
    if _MARKER not in out:
        msg = (
            f"{source}: not a BiomedParse v2 checkpoint ({_MARKER} is missing); pass "
            "biomedparse_v2.ckpt or a file written by segfm export --format biomedparse"
        )
        raise CheckpointError(msg)
    return dict(out)


def load_official(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Read a BiomedParse v2 checkpoint as the network's flat state dict (no pickled code runs).

    Args:
        path: ``biomedparse_v2.ckpt``, a file of :func:`save_official`, or a plain state dict.

    Returns:
        ``{network key: tensor}`` on the CPU, in the stored order.

    Raises:
        CheckpointError: If the file is missing, corrupt or not a BiomedParse network.
    """
    return _flat(load_file(path), str(path))


def load_into(model: nn.Module, path_or_state_dict: str | os.PathLike[str] | Mapping) -> None:
    """Load BiomedParse weights strictly, naming any mismatch in one line.

    Args:
        model: A :class:`segfm.models.biomedparse.BiomedParse`.
        path_or_state_dict: A checkpoint file or a loaded state dict.

    Raises:
        CheckpointError: If keys or shapes differ from the network's.
    """
    if isinstance(path_or_state_dict, str | os.PathLike):
        source, weights = str(path_or_state_dict), load_official(path_or_state_dict)
    else:
        source, weights = "state dict", _flat(path_or_state_dict, "state dict")
    load_strict(
        model, weights, source, "build it with the checkpoint's arch (v2 for biomedparse_v2.ckpt)"
    )


def save_official(model_or_state_dict: nn.Module | Mapping[str, Tensor], path: str | Path) -> Path:
    """Write the official layout ``{"state_dict": {"model." + key: tensor}}`` atomically.

    Args:
        model_or_state_dict: A BiomedParse network or its (flat or ``model.``-prefixed) state
            dict.
        path: Destination file.

    Returns:
        ``path``.

    Raises:
        CheckpointError: If it is not a BiomedParse network or cannot be written.
    """
    if isinstance(model_or_state_dict, nn.Module):
        model_or_state_dict = model_or_state_dict.state_dict()
    weights = _flat(model_or_state_dict, "state dict")
    payload = {"state_dict": {PREFIX + k: v.detach().cpu() for k, v in weights.items()}}
    return save_file(payload, path)
