"""Track every lesion of a DLT pairs file with saved embeddings (the library of ``segfm track``).

Each pair is matched from its source centre into its target with the embedding files
``<embeddings>/<volume>.h5``; points travel through world mm (:mod:`segfm.tracking.dlt`), so the
embedded volumes may be reoriented and resampled.
"""

from __future__ import annotations

import csv
import io
import json
import multiprocessing
import os
from collections import OrderedDict
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import nibabel as nib
import numpy as np
from tqdm import tqdm

from segfm.data.io.embeddings_h5 import read_embeddings
from segfm.errors import ConfigError, DataError
from segfm.tracking.dlt import (
    LesionPair,
    dlt_nifti_affine,
    dlt_to_world,
    markdown_table,
    read_dlt_pairs,
    score_pair,
    summarise,
    volume_id,
)
from segfm.tracking.matching import MatchSpace, fixed_point_match, match_points, match_space
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


@dataclass(frozen=True)
class TrackOptions:
    """How each lesion is matched (the options of ``segfm track``).

    Attributes:
        method: ``nearest``: argmax of the similarity; ``fixed_point``: a cube of fine nodes
            matched forward and back, robust linear fit, averaged.
        use_semantic: Average the SAM++ semantic similarity too; None: when the files have it.
        threshold: ``fixed_point``: smallest averaged similarity (in [-1, 1]) of a kept point.
        radius: ``fixed_point``: half-size of the cube of fine nodes (2: 5x5x5).
        iterations: ``fixed_point``: forward/backward passes (even).
        images: Folder of the DeepLesion NIfTI volumes (their affines); None: the affine
            ``DL_save_nifti.py`` writes, from the pairs file's spacing.

    Raises:
        ConfigError: If an option is out of range.
    """

    method: Method = "nearest"
    use_semantic: bool | None = None
    threshold: float = 0.8
    radius: int = 2
    iterations: int = 4
    images: Path | None = None

    def __post_init__(self) -> None:
        """Refuse options out of range, naming each with its value."""
        if not 0 <= self.threshold + 1 <= 2:
            msg = f"--threshold {self.threshold} must lie in [-1, 1] (a mean of cosine similarity)"
            raise ConfigError(msg)
        if self.iterations < 2 or self.iterations % 2 or self.radius < 0:
            msg = f"need even --iterations >= 2 ({self.iterations}), --radius >= 0 ({self.radius})"
            raise ConfigError(msg)


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


def track_pair(pair: LesionPair, folder: Path, options: TrackOptions) -> dict[str, Any]:
    """Match one pair's source centre into its target and score it (one row of the table).

    The embedding files are cached per process (forked workers inherit the cache).
    """
    key = (folder, options.use_semantic)
    if _STATE.get("key") != key:
        _STATE["key"], _STATE["volumes"] = key, _Volumes(*key)
    volumes: _Volumes = _STATE["volumes"]
    source, query = volumes.get(pair.source)
    target, target_space = volumes.get(pair.target)
    src_affine = _nifti_affine(options.images, pair.source, pair.source_spacing)
    tgt_affine = _nifti_affine(options.images, pair.target, pair.target_spacing)
    point = source.world_to_index(dlt_to_world(pair.source_center, src_affine))[0]
    if options.method == "nearest":
        found = match_points(query, target_space, point[None])
        pred, score, used = found.points[0], float(found.scores[0]), 1
    else:
        result = fixed_point_match(
            query,
            target_space,
            point,
            source.spacing,
            radius=options.radius,
            iterations=options.iterations,
            threshold=options.threshold,
        )
        pred, score, used = result.point, result.score, result.used
    world = target.index_to_world(pred)
    ijk = np.linalg.solve(tgt_affine[:3, :3], (world[0] - tgt_affine[:3, 3]))
    pred_xyz = ijk[[1, 0, 2]]
    row = {"pair": pair.pair_id, "source": pair.source, "target": pair.target}
    row |= {"pred_x": pred_xyz[0], "pred_y": pred_xyz[1], "pred_z": pred_xyz[2]}
    row |= {"score": score, "used_points": used} | score_pair(pair, pred_xyz)
    return row


def read_pairs_with_embeddings(folder: Path, pairs: str) -> list[LesionPair]:
    """The pairs of the pairs file, after checking that every volume has its embedding file.

    Raises:
        DataError: If the folder or embedding files are missing (all are listed).
    """
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
    return pair_list


def track_pairs(
    pair_list: list[LesionPair], folder: Path, options: TrackOptions, workers: int = 0
) -> list[dict[str, Any]]:
    """Track every pair, in ``workers`` processes (0: all cores), in the order of the list."""
    work = partial(track_pair, folder=folder, options=options)
    n_proc = min(workers or os.cpu_count() or 1, len(pair_list))
    progress = partial(tqdm, total=len(pair_list), desc="tracking", unit="pair", disable=None)
    _STATE.clear()
    if n_proc <= 1:
        return [work(p) for p in progress(pair_list)]
    with multiprocessing.Pool(n_proc) as pool:
        return list(progress(pool.imap(work, pair_list, chunksize=8)))


def _csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: f"{v:.4f}" if isinstance(v, float) else v for k, v in row.items()})
    return buffer.getvalue()


def write_tracking(rows: list[dict[str, Any]], summary: dict[str, Any], out: Path) -> None:
    """Write ``pairs_<method>.csv`` and ``summary_<method>.{json,md}`` into ``out``.

    Raises:
        DataError: If the folder is not writable.
    """
    method = summary["method"]
    try:
        atomic_write_text(out / f"pairs_{method}.csv", _csv(rows))
        atomic_write_text(out / f"summary_{method}.json", json.dumps(summary, indent=2) + "\n")
        atomic_write_text(out / f"summary_{method}.md", markdown_table(summary))
    except OSError as e:
        msg = f"cannot write into {out} ({e}); pass a writable --output folder"
        raise DataError(msg) from e


def track_lesions(
    embeddings: str, pairs: str, options: TrackOptions, output: str | None = None, workers: int = 0
) -> dict[str, Any]:
    """Track the pairs of a DLT pairs file and write the per-pair table and the summary.

    Args:
        embeddings: Folder of ``<volume>.h5`` embedding files.
        pairs: DLT pairs file (``test.json``).
        options: How each lesion is matched.
        output: Folder for the tables; default ``<embeddings>/tracking``.
        workers: Processes (0: all cores).

    Returns:
        The summary (CPM and MED in both conventions, also written as JSON).

    Raises:
        ConfigError: If ``workers`` is negative.
        DataError: If embedding files are missing (all are listed) or a file is bad.
    """
    if workers < 0:
        msg = f"--workers must be >= 0, got {workers}"
        raise ConfigError(msg)
    folder = Path(embeddings)
    pair_list = read_pairs_with_embeddings(folder, pairs)
    rows = track_pairs(pair_list, folder, options, workers)
    summary = {"method": options.method, **summarise(rows)}
    write_tracking(rows, summary, Path(output) if output else folder / "tracking")
    return summary
