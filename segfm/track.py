"""Lesion tracking with saved anatomical embeddings (``segfm track``)."""

from __future__ import annotations

import csv
import io
import json
import multiprocessing
import os
from collections import OrderedDict
from functools import partial
from pathlib import Path
from typing import Any, Literal

import nibabel as nib
import numpy as np
from tqdm import tqdm

from segfm.data.io.embeddings_h5 import read_embeddings
from segfm.errors import ConfigError, DataError
from segfm.evaluation.dlt import (
    LesionPair,
    dlt_nifti_affine,
    dlt_to_world,
    markdown_table,
    read_dlt_pairs,
    score_pair,
    summarise,
    volume_id,
)
from segfm.evaluation.tracking import MatchSpace, fixed_point_match, match_points, match_space
from segfm.utils.files import atomic_write_text

Method = Literal["nearest", "fixed_point"]
_COLUMNS = [
    "pair",
    "source",
    "target",
    "pred_x",
    "pred_y",
    "pred_z",
    "score",
    "used_points",
    "error_mm",
    "error_x",
    "error_y",
    "error_z",
    "radius_mm",
    "in_box",
    "within_radius",
    "within_10mm",
    "within_10mm_dlt",
]


class _Volumes:
    """Embedding files by volume id, the most recent few kept in memory."""

    def __init__(self, folder: Path, use_semantic: bool | None, size: int = 8) -> None:
        self.folder, self.use_semantic, self.size = folder, use_semantic, size
        self.cache: OrderedDict[str, tuple[Any, MatchSpace]] = OrderedDict()

    def get(self, name: str) -> tuple[Any, MatchSpace]:
        key = volume_id(name)
        if key not in self.cache:
            vol = read_embeddings(self.folder / f"{key}.h5", load_image=False)
            self.cache[key] = (vol, match_space(vol, self.use_semantic))
            while len(self.cache) > self.size:
                self.cache.popitem(last=False)
        self.cache.move_to_end(key)
        return self.cache[key]


def _nifti_affine(images: Path | None, name: str, spacing: np.ndarray) -> np.ndarray:
    if images is None:
        return dlt_nifti_affine(spacing)
    path = images / name
    try:
        return np.asarray(nib.load(path).affine, dtype=np.float64)
    except (OSError, ValueError) as e:
        msg = (
            f"cannot read the header of {path} ({e}); pass the DeepLesion NIfTI folder as --images"
        )
        raise DataError(msg) from e


_STATE: dict[str, Any] = {}


def _track_one(pair: LesionPair, options: dict[str, Any]) -> dict[str, Any]:
    key = (options["embeddings"], options["use_semantic"])
    if _STATE.get("key") != key:  # one cache per process and run (forked workers inherit it)
        _STATE["key"], _STATE["volumes"] = key, _Volumes(*key)
    volumes: _Volumes = _STATE["volumes"]
    source, query = volumes.get(pair.source)
    target, key = volumes.get(pair.target)
    images = options["images"]
    src_affine = _nifti_affine(images, pair.source, pair.source_spacing)
    tgt_affine = _nifti_affine(images, pair.target, pair.target_spacing)
    point = source.world_to_index(dlt_to_world(pair.source_center, src_affine))[0]
    if options["method"] == "nearest":
        found = match_points(query, key, point[None])
        pred, score, used = found.points[0], float(found.scores[0]), 1
    else:
        result = fixed_point_match(
            query,
            key,
            point,
            source.spacing,
            radius=options["radius"],
            iterations=options["iterations"],
            threshold=options["threshold"],
        )
        pred, score, used = result.point, result.score, result.used
    world = target.index_to_world(pred)
    ijk = np.linalg.solve(tgt_affine[:3, :3], (world[0] - tgt_affine[:3, 3]))
    pred_xyz = ijk[[1, 0, 2]]
    row = {"pair": pair.pair_id, "source": pair.source, "target": pair.target}
    row |= {"pred_x": pred_xyz[0], "pred_y": pred_xyz[1], "pred_z": pred_xyz[2]}
    row |= {"score": score, "used_points": used} | score_pair(pair, pred_xyz)
    return row


def _csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: f"{v:.4f}" if isinstance(v, float) else v for k, v in row.items()})
    return buffer.getvalue()


def track(
    embeddings: str,
    pairs: str,
    output: str | None = None,
    method: Method = "nearest",
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
    if not 0 <= threshold + 1 <= 2:
        msg = f"--threshold {threshold} must lie in [-1, 1] (a mean of cosine similarities)"
        raise ConfigError(msg)
    if iterations < 2 or iterations % 2 or radius < 0 or workers < 0:
        msg = (
            f"need even --iterations >= 2 ({iterations}), --radius >= 0 ({radius}), --workers >= 0"
        )
        raise ConfigError(msg)
    folder = Path(embeddings)
    if not folder.is_dir():
        msg = f"{folder} does not exist or is not a folder; check --embeddings"
        raise DataError(msg)
    pair_list = read_dlt_pairs(pairs)
    names = sorted({volume_id(n) for p in pair_list for n in (p.source, p.target)})
    missing = [n for n in names if not (folder / f"{n}.h5").is_file()]
    if missing:
        shown = ", ".join(f"{n}.h5" for n in missing[:20]) + (" ..." if len(missing) > 20 else "")
        msg = (
            f"{len(missing)} of {len(names)} embedding files are missing in {folder}: {shown}; "
            "embed these volumes first (segfm predict with the anatomical-embedding export config)"
        )
        raise DataError(msg)
    options = {
        "embeddings": folder,
        "use_semantic": use_semantic,
        "method": method,
        "threshold": threshold,
        "radius": radius,
        "iterations": iterations,
        "images": Path(images) if images else None,
    }
    work = partial(_track_one, options=options)
    n_proc = min(workers or os.cpu_count() or 1, len(pair_list))
    progress = partial(tqdm, total=len(pair_list), desc="tracking", unit="pair", disable=None)
    _STATE.clear()
    if n_proc <= 1:
        rows = [work(p) for p in progress(pair_list)]
    else:
        with multiprocessing.Pool(n_proc) as pool:
            rows = list(progress(pool.imap(work, pair_list, chunksize=8)))
    summary = {"method": method, **summarise(rows)}
    table = markdown_table(summary)
    out = Path(output) if output else folder / "tracking"
    try:
        atomic_write_text(out / f"pairs_{method}.csv", _csv(rows))
        atomic_write_text(out / f"summary_{method}.json", json.dumps(summary, indent=2) + "\n")
        atomic_write_text(out / f"summary_{method}.md", table)
    except OSError as e:
        msg = f"cannot write into {out} ({e}); pass a writable --output folder"
        raise DataError(msg) from e
    print(f"tracked {len(rows)} pairs ({method}) into {out}\n{table}")
    return summary
