"""SAM-Med3D checkpoints: the released training files in, the same layout out.

SAM-Med3D's ``train.py`` saves (and its released ``sam_med3d.pth`` / ``sam_med3d_turbo.pth``
are) ``{"epoch", "model_state_dict", "optimizer_state_dict", "lr_scheduler_state_dict",
"losses", "dices", "best_loss", "best_dice", "args", "used_datas"}`` with the 324 keys of
:func:`segfm.models.sam_med3d` in ``model_state_dict`` and the training options as an
``argparse.Namespace`` in ``args``. :func:`load_official` reads such a file with
``torch.load(weights_only=True)``: ``argparse.Namespace`` is the only class allowed besides
tensors and plain data (see :data:`segfm.checkpoints.io.SAFE_GLOBALS`), so no pickled code runs
and a file carrying any other class is refused.

:func:`save_official` writes ``{"epoch": epoch, "model_state_dict": ...}`` and nothing else:

- ``model_state_dict`` is all that the official code reads to start from a file (``train.py``
  without ``--resume``, ``medim.create_model("SAM-Med3D", pretrained=True, checkpoint_path=...)``).
- ``optimizer_state_dict`` and ``lr_scheduler_state_dict`` are left out: segfm's optimiser
  parameter groups are not SAM-Med3D's, so no faithful state exists to write; ``--resume`` on
  the file stops at ``KeyError: 'optimizer_state_dict'`` instead of resuming with a wrong one.
- ``losses``, ``dices``, ``best_loss``, ``best_dice`` and ``used_datas`` are only read by
  ``--resume`` (or not at all), so they are left out too.
- ``args`` is left out: no official code reads it, and an ``argparse.Namespace`` would stop the
  file from loading with a plain ``torch.load(weights_only=True)``.
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

__all__ = ["PATCH_KEY", "load_into", "load_official", "save_official"]

# The patch embedding: a 3D convolution in SAM-Med3D, 2D in SAM and MedSAM.
PATCH_KEY = "image_encoder.patch_embed.proj.weight"


def _check_3d(state_dict: Mapping[str, Tensor], source: str) -> None:
    """Refuse state dicts that are not a 3D (SAM-Med3D) network."""
    weight = state_dict.get(PATCH_KEY)
    if weight is None or weight.ndim != 5:
        found = "is missing" if weight is None else f"has shape {list(weight.shape)}"
        msg = (
            f"{source}: not a SAM-Med3D network ({PATCH_KEY} {found}, expected the 5-D weight "
            "of a 3D convolution); for 2D SAM or MedSAM use segfm.checkpoints.sam / --format sam"
        )
        raise CheckpointError(msg)


def load_official(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Read a SAM-Med3D checkpoint as its flat state dict, without running pickled code.

    Reads the released / ``train.py`` layout (``model_state_dict`` next to optimiser state and
    ``args``), files written by :func:`save_official`, plain state dicts and segfm's Lightning
    checkpoints.

    Args:
        path: Checkpoint file (e.g. ``sam_med3d_turbo.pth``).

    Returns:
        ``{official key: tensor}`` on the CPU, in the stored order.

    Raises:
        CheckpointError: If the file is missing or corrupt, holds pickled classes other than
            tensors, plain data and ``argparse.Namespace``, holds no SAM weights, or holds a 2D
            SAM.
    """
    state_dict = unwrap_state_dict(load_file(path), source=str(path))
    _check_3d(state_dict, str(path))
    return state_dict


def save_official(
    model_or_state_dict: nn.Module | Mapping[str, Any],
    path: str | os.PathLike[str],
    epoch: int = 0,
) -> Path:
    """Write a SAM-Med3D file in the official layout ``{"epoch", "model_state_dict"}``.

    The official training code (``torch.load(path)["model_state_dict"]`` then
    ``load_state_dict``) and ``medim.create_model("SAM-Med3D", pretrained=True,
    checkpoint_path=path)`` load it; :func:`load_official` reads back every tensor bit for bit.
    See the module docstring for the keys that are left out. Written atomically.

    Args:
        model_or_state_dict: A :class:`segfm.models.Sam` built by
            :func:`segfm.models.sam_med3d`, a module holding one (prefixes such as ``model.`` are
            removed), or a state dict in any form :func:`unwrap_state_dict` reads.
        path: Destination file.
        epoch: Stored as ``epoch``: the number of finished epochs, where the official
            ``--resume`` would start counting.

    Returns:
        ``path``.

    Raises:
        CheckpointError: If no SAM-Med3D weights are found or the file cannot be written.
        ValueError: If ``epoch`` is negative.
    """
    if epoch < 0:
        msg = f"epoch must be >= 0, got {epoch}"
        raise ValueError(msg)
    weights, source = official_weights(model_or_state_dict)
    _check_3d(weights, source)
    payload = {"epoch": int(epoch), "model_state_dict": weights}
    return save_file(payload, path)
