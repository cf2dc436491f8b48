"""Build a tiny M3D-Seg root (SegVol's layout), with every label voxel known by construction.

``python -m tests.data.m3d_seg.data OUT`` writes ``OUT/m3d`` with two dataset codes:

* ``0000`` (liver, kidney; 4 cases): the json ``data_tools.build_dataset`` / SegVol's
  ``train_data_process.py`` writes, absolute paths and ``numTraining``, plus an ``affine`` per
  entry; cases 0 and 1 have a ``pseudo_mask.npy`` on SegVol's fixed pseudo-mask grid (here
  (X, Y, Z) = (32, 32, 16)).
* ``0001`` (spleen, liver, tumour; 3 cases): the downloaded M3D-Seg json, paths relative to the
  root and ``numTrain``; no pseudo masks.

Images are stored (1, X, Y, Z) with shape :data:`SHAPE`; labels are boxes (:data:`BOXES`) in
(x, y, z) voxel ranges, as one-hot csr matrices named ``mask_(C, X, Y, Z).npz``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from scipy import sparse

SEED = 0
SHAPE = (40, 36, 24)  # stored (X, Y, Z)
PSEUDO_GRID = (32, 32, 16)
SPACING = (0.8, 0.8, 2.5)  # (x, y, z) mm of code 0000
Box = tuple[int, int, int, int, int, int]  # x0, x1, y0, y1, z0, z1 (stops excluded)
CODES = {"0000": ("liver", "kidney"), "0001": ("spleen", "liver", "tumour")}
BOXES: dict[str, dict[str, dict[int, Box]]] = {
    "0000": {
        "case_a": {1: (4, 20, 6, 22, 4, 16), 2: (24, 34, 10, 20, 8, 14)},
        "case_b": {1: (6, 22, 4, 18, 2, 12)},
        "case_c": {2: (10, 20, 10, 20, 10, 20)},
        "case_d": {1: (2, 12, 2, 12, 2, 12), 2: (20, 30, 20, 30, 12, 22)},
    },
    "0001": {
        "s_00": {1: (5, 15, 5, 15, 5, 15), 3: (20, 26, 20, 26, 6, 12)},
        "s_01": {2: (8, 30, 8, 28, 4, 20)},
        "s_02": {1: (10, 20, 4, 14, 2, 8), 2: (22, 36, 16, 30, 10, 20)},
    },
}
TEST = {"0000": ["case_c"], "0001": ["s_02"]}
PSEUDO = {"0000": ["case_a", "case_b"], "0001": []}


def label_volume(boxes: dict[int, Box]) -> np.ndarray:
    """The class-id map (X, Y, Z) of a case's boxes."""
    label = np.zeros(SHAPE, dtype=np.int64)
    for cls, (x0, x1, y0, y1, z0, z1) in boxes.items():
        label[x0:x1, y0:y1, z0:z1] = cls
    return label


def _write_case(
    folder: Path, boxes: dict[int, Box], classes: int, rng: np.random.Generator
) -> None:
    """``image.npy`` (z-scored noise, brighter inside the boxes) and the sparse one-hot mask."""
    folder.mkdir(parents=True)
    label = label_volume(boxes)
    image = rng.normal(-1.0, 0.2, SHAPE) + (label > 0) * (1.0 + 0.3 * label)
    image[:2] = -2.0  # a dark margin that the foreground crop removes
    np.save(folder / "image.npy", image[None].astype(np.float32))
    onehot = np.stack([label == c for c in range(1, classes + 1)]).astype(np.int32)
    shape = (classes, *SHAPE)
    sparse.save_npz(folder / f"mask_{shape}.npz", sparse.csr_matrix(onehot.reshape(classes, -1)))


def _write_pseudo(folder: Path, rng: np.random.Generator) -> None:
    """Pseudo regions on SegVol's fixed grid: 4 octant-like blocks plus a few tiny specks."""
    x, y, z = PSEUDO_GRID
    regions = np.zeros(PSEUDO_GRID, dtype=np.int64)
    regions[x // 2 :] += 1
    regions[:, y // 2 :] += 2
    specks = rng.integers(0, [x, y, z], size=(3, 3))
    for i, (a, b, c) in enumerate(specks):
        regions[a, b, c] = 10 + i  # single voxels: under 0.1 % of the volume
    np.save(folder / "pseudo_mask.npy", regions)


def build(folder: Path) -> Path:
    """Write the root under ``folder``; return it."""
    rng = np.random.default_rng(SEED)
    root = folder / "m3d"
    for code, names in CODES.items():
        entries: dict[str, list[dict[str, object]]] = {"train": [], "test": []}
        for case, boxes in BOXES[code].items():
            _write_case(root / code / case, boxes, len(names), rng)
            if case in PSEUDO[code]:
                _write_pseudo(root / code / case, rng)
            mask = f"mask_{(len(names), *SHAPE)}.npz"
            if code == "0000":  # as SegVol's builder writes it: absolute paths
                entry: dict[str, object] = {
                    "image": str((root / code / case / "image.npy").resolve()),
                    "label": str((root / code / case / mask).resolve()),
                    "affine": np.diag([*SPACING, 1.0]).tolist(),
                }
            else:  # as the downloaded M3D-Seg: relative to the root
                entry = {"image": f"{code}/{case}/image.npy", "label": f"{code}/{case}/{mask}"}
            entries["test" if case in TEST[code] else "train"].append(entry)
        labels = {"0": "background"} | {str(i + 1): n for i, n in enumerate(names)}
        count = "numTraining" if code == "0000" else "numTrain"
        content = {
            "name": f"{code} Dataset",
            "description": f"{code} Dataset",
            "tensorImageSize": "4D",
            "modality": {"0": "CT"},
            "labels": labels,
            count: len(entries["train"]),
            "numTest": len(entries["test"]),
            **entries,
        }
        (root / code / f"{code}.json").write_text(json.dumps(content, indent=2))
    return root


if __name__ == "__main__":
    print(build(Path(sys.argv[1] if len(sys.argv) > 1 else "m3d_seg_data")))
