"""``segfm export``: a Lightning checkpoint's network in its family's official format."""

from __future__ import annotations

from pathlib import Path
from typing import Literal


def export(
    ckpt_path: str,
    output: str,
    format: str | None = None,
    track: Literal["auto", "interactive", "text"] = "auto",
) -> Path:
    """Write the network of a Lightning checkpoint as an official checkpoint file.

    Args:
        ckpt_path: Lightning checkpoint written by ``segfm fit`` (``.../last.ckpt``).
        output: File to write, e.g. ``medsam_vit_b.pth`` (written atomically); for
            ``--format challenge`` the folder of the build context.
        format: Official format (``sam``: loads with segment_anything's
            ``sam_model_registry["vit_b"](checkpoint=...)``), or ``challenge``: a CVPR 2025
            submission of any promptable method (weights, resolved config, ``predict.sh``,
            Dockerfile, README; see ``segfm challenge-eval``). Defaults to the method's own
            format.
        track: ``--format challenge`` only: the track ``predict.sh`` enters; ``auto`` decides
            per case (text when it has ``text_prompts`` and no clicks).

    Returns:
        The path written.
    """
    if format == "challenge":
        from segfm.challenge.bundle import write_bundle

        folder = write_bundle(ckpt_path, output, track=track)
        print(f"wrote {folder} (challenge build context: see {folder / 'README.md'})")
        return folder
    from segfm.checkpoints.export import export_checkpoint

    path, fmt = export_checkpoint(ckpt_path, output, format)
    print(f"wrote {path} ({fmt} format)")
    return path
