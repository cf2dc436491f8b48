"""``segfm track``: lesion tracking with saved anatomical embeddings."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal


def track(
    embeddings: str,
    pairs: str,
    output: str | None = None,
    method: Literal["nearest", "fixed_point"] = "nearest",
    use_semantic: bool | None = None,
    threshold: float = 0.8,
    radius: int = 2,
    iterations: int = 4,
    images: str | None = None,
    workers: int = 0,
) -> dict[str, Any]:
    """Track DeepLesion lesions with saved embeddings and report CPM and MED (DLT pairs).

    Every pair of the pairs file (JimmyCai91/DLT ``data/test.json``) is matched from its source
    centre into its target with the embedding files ``<embeddings>/<volume>.h5`` (written by
    ``segfm predict`` with the anatomical-embedding method). Points travel through world mm, so
    the embedded volumes may be reoriented and resampled. Prints a markdown table of both
    conventions (inside the target box / TLT; within the RECIST radius / DLT's evaluation.py)
    and writes ``pairs_<method>.csv`` and ``summary_<method>.{json,md}`` into ``output``.

    Args:
        embeddings: Folder of ``<volume>.h5`` embedding files.
        pairs: DLT pairs file (``test.json``).
        output: Folder for the tables; default ``<embeddings>/tracking``.
        method: ``nearest``: argmax of the similarity; ``fixed_point``: a cube of fine nodes
            matched forward and back, robust linear fit, averaged (the original's stable points).
        use_semantic: Average the SAM++ semantic similarity too; default: when the files have it.
        threshold: ``fixed_point``: smallest averaged similarity (in [-1, 1]) of a kept point.
        radius: ``fixed_point``: half-size of the cube of fine nodes (2: 5x5x5).
        iterations: ``fixed_point``: forward/backward passes (even).
        images: Folder of the DeepLesion NIfTI volumes, to read their affines; default: the
            affine ``DL_save_nifti.py`` writes, from the pairs file's spacing.
        workers: Processes (0: all cores).

    Returns:
        The summary (also written as JSON).

    Raises:
        DataError: If embedding files are missing (all are listed) or a file is bad.
        ConfigError: If an option is out of range.
    """
    from segfm.tracking.dlt import markdown_table
    from segfm.tracking.lesions import TrackOptions, track_lesions

    image_folder = Path(images) if images else None
    options = TrackOptions(method, use_semantic, threshold, radius, iterations, image_folder)
    summary = track_lesions(embeddings, pairs, options, output, workers)
    out = output or Path(embeddings) / "tracking"
    print(f"tracked {summary['pairs']} pairs ({method}) into {out}\n{markdown_table(summary)}")
    return summary
