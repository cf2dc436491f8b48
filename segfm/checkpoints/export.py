"""Export a Lightning checkpoint's network in its family's official checkpoint format."""

from __future__ import annotations

import importlib
from pathlib import Path

from segfm.checkpoints.formats import FORMATS, export_state_dict
from segfm.checkpoints.io import load_file
from segfm.errors import CheckpointError


def _format_of(hparams: dict, ckpt_path: str) -> str:
    class_path = hparams.get("_class_path")
    if class_path:
        module, _, name = class_path.rpartition(".")
        fmt = getattr(getattr(importlib.import_module(module), name, None), "official_format", None)
        if fmt:
            return fmt
    choices = ", ".join(sorted(FORMATS))
    msg = f"{ckpt_path}: no official format known; pass --format ({choices})"
    raise CheckpointError(msg)


def export_checkpoint(ckpt_path: str, output: str, format: str | None = None) -> tuple[Path, str]:
    """Write the network of a Lightning checkpoint as an official checkpoint file.

    Args:
        ckpt_path: Lightning checkpoint written by ``segfm fit`` (``.../last.ckpt``).
        output: File to write, e.g. ``medsam_vit_b.pth``; written atomically.
        format: Official format (``sam``: loads with segment_anything's
            ``sam_model_registry["vit_b"](checkpoint=...)``). Defaults to the method's own format.

    Returns:
        The path written and the format written in.

    Raises:
        CheckpointError: If the file is not a Lightning checkpoint or no format is known.
    """
    ckpt = load_file(ckpt_path)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        msg = f"{ckpt_path}: not a Lightning checkpoint (no state_dict); pass a .ckpt of segfm fit"
        raise CheckpointError(msg)
    fmt = format or _format_of(ckpt.get("hyper_parameters", {}), ckpt_path)
    return export_state_dict(ckpt["state_dict"], fmt, output), fmt
