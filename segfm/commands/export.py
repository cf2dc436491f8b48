"""``segfm export``: a Lightning checkpoint's network in its family's official format."""

from __future__ import annotations

from pathlib import Path


def export(ckpt_path: str, output: str, format: str | None = None) -> Path:
    """Write the network of a Lightning checkpoint as an official checkpoint file.

    Args:
        ckpt_path: Lightning checkpoint written by ``segfm fit`` (``.../last.ckpt``).
        output: File to write, e.g. ``medsam_vit_b.pth``; written atomically.
        format: Official format (``sam``: loads with segment_anything's
            ``sam_model_registry["vit_b"](checkpoint=...)``). Defaults to the method's own format.

    Returns:
        The path written.
    """
    from segfm.checkpoints.export import export_checkpoint

    path, fmt = export_checkpoint(ckpt_path, output, format)
    print(f"wrote {path} ({fmt} format)")
    return path
