"""SegVol pseudo masks on CPU: the vectorised Felzenszwalb variant against the sequential original.

    python benchmarks/bench_fh.py            # 4 cases for the tool
    python benchmarks/bench_fh.py --quick    # 2 cases, smaller reference volume

- ``felzenszwalb_3d`` on one 256x256x32 CT-like volume (smooth organs, noise; the grid SegVol
  segments), one process: seconds per volume;
- ``data_tools.build_pseudo_mask`` on generated M3D-Seg cases of 320x320x40 (read, area resize,
  segment, paste the ground truth, write) with 1 and 2 processes: volumes per second;
- the sequential original (``benchmarks/reference/segvol_felzenszwalb.py``, the logic of SegVol's
  ``data_process/felzenszwalb.py`` in pure Python) against ``felzenszwalb_3d`` on a smaller
  volume: ``ratio`` is segfm / original seconds, and the agreement of the two labelings (adjusted
  Rand index, and whether they are identical).

Timings on a shared machine are noisy; each is the median of a few runs.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import ndimage, sparse

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import markdown_table, ratio, time_calls
from benchmarks.reference.segvol_felzenszwalb import felzenszwalb_reference
from data_tools.build_pseudo_mask import build_pseudo_masks
from data_tools.felzenszwalb3d import felzenszwalb_3d


def ct_like(shape: tuple[int, int, int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A z-scored volume of smooth blobs at a few intensity levels plus noise; two organ masks."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=[s / 16 for s in shape])
    levels = np.digitize(field, np.quantile(field, [0.2, 0.5, 0.8]))
    image = levels + 0.3 * rng.standard_normal(shape)
    image = (image - image.mean()) / image.std()
    organs = np.stack([levels == 3, levels == 0]).astype(np.uint8)
    return image.astype(np.float32), organs


def ari(a: np.ndarray, b: np.ndarray) -> float:
    """Adjusted Rand index of two labelings."""
    _, a = np.unique(a.ravel(), return_inverse=True)
    _, b = np.unique(b.ravel(), return_inverse=True)
    table = sparse.coo_matrix((np.ones(a.size), (a, b))).toarray()

    def pairs(x: np.ndarray) -> float:
        return float((x * (x - 1) / 2).sum())

    index, rows, cols = pairs(table), pairs(table.sum(1)), pairs(table.sum(0))
    expected = rows * cols / pairs(np.array([a.size]))
    return (index - expected) / ((rows + cols) / 2 - expected)


def make_dataset(root: Path, cases: int) -> None:
    """M3D-Seg cases ``root/0000/case_i`` of 320x320x40."""
    for i in range(cases):
        image, organs = ct_like((320, 320, 40), seed=i)
        folder = root / "0000" / f"case_{i}"
        folder.mkdir(parents=True)
        np.save(folder / "image.npy", image[None])
        csr = sparse.csr_matrix(organs.reshape(len(organs), -1))
        sparse.save_npz(folder / f"mask_{organs.shape}.npz", csr)


def tool_rate(root: Path, cases: int, workers: int) -> float:
    """Volumes per second of the tool over all cases (pool start included)."""
    start = time.perf_counter()
    build_pseudo_masks(root, "0000", workers=workers, overwrite=True, progress=False)
    return cases / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    """Measure and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 cases, 32x32x16 reference")
    args = parser.parse_args(argv)
    cases = 2 if args.quick else 4

    volume, _ = ct_like((256, 256, 32), seed=0)
    ours = time_calls(lambda: felzenszwalb_3d(volume), warmup=1, repeats=3)
    segments = int(felzenszwalb_3d(volume).max()) + 1
    with tempfile.TemporaryDirectory() as tmp:
        make_dataset(Path(tmp), cases)
        one = tool_rate(Path(tmp), cases, workers=1)
        two = tool_rate(Path(tmp), cases, workers=2)
    speed = markdown_table(
        ["step", "1 process", "2 processes", "scaling 1 -> 2", "note"],
        [
            [
                "felzenszwalb_3d, 256x256x32 (s/volume)",
                f"{ours['median_s']:.2f}",
                "",
                "",
                f"{segments} segments; CPU {ours['median_cpu_s']:.2f} s",
            ],
            [
                f"build_pseudo_mask, {cases} cases of 320x320x40 (volumes/s)",
                f"{one:.2f}",
                f"{two:.2f}",
                f"{two / one:.2f}",
                f"{1 / one:.2f} s/volume with 1 process: read, resize, segment, write",
            ],
        ],
    )

    shape = (32, 32, 16) if args.quick else (64, 64, 16)
    small, _ = ct_like(shape, seed=1)
    min_size = 1000 if not args.quick else 100
    start = time.perf_counter()
    reference = felzenszwalb_reference(small, min_size=min_size)
    reference_s = time.perf_counter() - start
    fast = time_calls(lambda: felzenszwalb_3d(small, min_size=min_size), warmup=1, repeats=5)
    labels = felzenszwalb_3d(small, min_size=min_size)
    agreement = markdown_table(
        ["volume", "original (pure Python) s", "segfm s", "ratio", "ARI", "identical labels"],
        [
            [
                "x".join(map(str, shape)) + f", min_size {min_size}",
                f"{reference_s:.2f}",
                f"{fast['median_s']:.3f}",
                ratio(fast["median_s"], reference_s),
                f"{ari(labels, reference):.4f}",
                str(bool(np.array_equal(labels, reference))),
            ]
        ],
    )
    print(speed + "\n\n" + agreement)


if __name__ == "__main__":
    main()
