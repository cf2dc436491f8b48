"""BiomedParse's 2.5D ("fractal volumetric") encoding on CPU: the tool and the encoder alone.

    python benchmarks/bench_encoding25d.py            # 8 generated volumes, 512 px
    python benchmarks/bench_encoding25d.py --quick    # 4 volumes, 256 px

On volumes of ``data_tools.synthetic_npz`` (about 32 x 96 x 96, both datasets):

- ``data_tools.process_2d`` with 1 and 2 processes (read the npz, encode every slice with its
  neighbours, write RGB and mask PNGs and ``train.json``): volumes and slices per second, and the
  scaling from 1 to 2 processes;
- ``encode_volume`` alone (tool path: pad, bicubic resize, neighbours) on the decoded volumes,
  one process: volumes and slices per second.

Each row runs in a fresh process. Timings on a shared machine are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import markdown_table, run_isolated


def worker(kind: str, root: str, size: int) -> dict[str, float]:
    """One measurement (runs in a fresh process)."""
    import numpy as np

    from segfm.data.io.npz_cvpr import find_training_cases, read_case, read_class_prompts

    cases = find_training_cases(root, sorted(read_class_prompts(Path(root) / "class_prompts.json")))
    if kind.startswith("process_2d"):
        from data_tools.process_2d import process

        workers = int(kind.rsplit("_", 1)[1])
        start = time.perf_counter()
        process(root, size=size, workers=workers, overwrite=True, progress=False)
        seconds = time.perf_counter() - start
        slices = sum(1 for _ in Path(root).glob("*/processed*/train/*.png"))
        return {"volumes_s": len(cases) / seconds, "slices_s": slices / seconds}
    if kind == "encode_volume":
        import torch

        from segfm.transforms.encoding25d import encode_volume

        torch.set_num_threads(1)  # as in one tool process
        volumes = [read_case(c, read_label=False).image for c in cases]
        encode_volume(volumes[0], size)  # warm-up
        start = time.perf_counter()
        slices = sum(encode_volume(np.asarray(v), size)[0].shape[0] for v in volumes)
        seconds = time.perf_counter() - start
        return {"volumes_s": len(volumes) / seconds, "slices_s": slices / seconds}
    msg = f"unknown measurement {kind}"
    raise ValueError(msg)


def main(argv: list[str] | None = None) -> None:
    """Make the volumes, measure every row in a fresh process, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 volumes at 256 px (smoke test)")
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        kind, root, size = args.worker
        print(json.dumps(worker(kind, root, int(size))))
        return
    from data_tools.synthetic_npz import make_dataset

    per_dataset, size = (2, 256) if args.quick else (4, 512)
    with tempfile.TemporaryDirectory() as tmp:
        root = str(make_dataset(Path(tmp) / "data", num_cases=per_dataset, num_test=0))
        rows = {
            kind: run_isolated(__file__, ["--worker", kind, root, str(size)])
            for kind in ("process_2d_1", "process_2d_2", "encode_volume")
        }
    one, two, enc = rows["process_2d_1"], rows["process_2d_2"], rows["encode_volume"]
    volumes = 2 * per_dataset
    table = markdown_table(
        [
            "tool",
            "1 process volumes/s",
            "2 processes volumes/s",
            "slices/s (1 / 2)",
            "scaling 1 -> 2",
        ],
        [
            [
                f"process_2d, {volumes} volumes ~32x96x96 -> {size} px PNGs",
                f"{one['volumes_s']:.2f}",
                f"{two['volumes_s']:.2f}",
                f"{one['slices_s']:.1f} / {two['slices_s']:.1f}",
                f"{two['volumes_s'] / one['volumes_s']:.2f}",
            ],
            [
                f"encode_volume alone (tool path, {size} px, 1 thread)",
                f"{enc['volumes_s']:.2f}",
                "-",
                f"{enc['slices_s']:.1f}",
                "-",
            ],
        ],
    )
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"{volumes} synthetic volumes; load average at the end: {load}\n")
    print(table)


if __name__ == "__main__":
    main()
