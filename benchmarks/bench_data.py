"""Data pipeline and tools on CPU: does loading keep up with reading the files?

    python benchmarks/bench_data.py            # 12 generated cases
    python benchmarks/bench_data.py --quick    # 4 cases

On a dataset made by ``data_tools.synthetic``:

- ``data_tools.pre_ct_mr`` at 256 px with 1 and 2 processes: slices written per second;
- ``NpySliceDataModule`` (2 workers): training samples per second against reading the same
  ``.npy`` files with ``np.load`` in one process;
- ``NnUNetDataModule`` (2 workers, 1.5 mm, 64³ crops): ``setup`` (decoding, resampling and
  caching every case: the first epoch's extra cost), then training samples per second from the
  cache, against decoding the same NIfTI files with nibabel in one process.

``ratio`` is segfm / raw read (goal >= 0.9). Each row runs in a fresh process.
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


def _loader_rate(module: object, epochs: int = 2) -> float:
    """Training samples per second over ``epochs`` passes (workers started before timing)."""
    loader = module.train_dataloader()  # type: ignore[attr-defined]
    iterator = iter(loader)
    next(iterator)  # start the workers
    count, start = 0, time.perf_counter()
    for batch in iterator:
        count += batch["image"].shape[0]
    for _ in range(epochs - 1):
        for batch in loader:
            count += batch["image"].shape[0]
    return count / (time.perf_counter() - start)


def worker(kind: str, root: str, out: str) -> dict[str, float]:
    """One measurement (runs in a fresh process)."""
    import nibabel as nib
    import numpy as np

    if kind.startswith("pre_ct_mr"):
        from data_tools.pre_ct_mr import preprocess

        workers = int(kind.rsplit("_", 1)[1])
        start = time.perf_counter()
        preprocess(out, nnunet=root, image_size=256, workers=workers, progress=False, prefix="CT_S")
        slices = len(list((Path(out) / "imgs").glob("*.npy")))
        return {"rate": slices / (time.perf_counter() - start), "items": slices}
    if kind == "npy_raw":
        files = sorted((Path(root) / "imgs").glob("*.npy"))
        start = time.perf_counter()
        for f in files:
            np.load(f)
            np.load(Path(root) / "gts" / f.name)
        return {"rate": len(files) / (time.perf_counter() - start), "items": len(files)}
    if kind == "npy_module":
        from segfm.data import NpySliceDataModule

        module = NpySliceDataModule(root, batch_size=8, num_workers=2, val_fraction=0.0)
        module.setup("fit")
        return {"rate": _loader_rate(module)}
    if kind == "nifti_raw":
        images = sorted((Path(root) / "imagesTr").glob("*.nii.gz"))
        start = time.perf_counter()
        for image in images:
            np.asarray(nib.load(image).dataobj)
            label = Path(root) / "labelsTr" / image.name.replace("_0000", "")
            np.asarray(nib.load(label).dataobj)
        return {"rate": len(images) / (time.perf_counter() - start), "items": len(images)}
    if kind == "nnunet_module":
        from segfm.data import NnUNetDataModule

        module = NnUNetDataModule(
            root,
            batch_size=2,
            num_workers=2,
            patch_size=64,
            val_fraction=0.0,
            test_fraction=0.0,
            cache_dir=out,
        )
        start = time.perf_counter()
        module.setup("fit")
        setup_s = time.perf_counter() - start
        return {"rate": _loader_rate(module), "setup_s": setup_s}
    msg = f"unknown measurement {kind}"
    raise ValueError(msg)


def main(argv: list[str] | None = None) -> None:
    """Make the data, measure every row in a fresh process, print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 cases (smoke test)")
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(*args.worker)))
        return
    from data_tools.synthetic import make_dataset

    cases = 4 if args.quick else 12
    with tempfile.TemporaryDirectory() as tmp:
        raw = make_dataset(Path(tmp) / "raw", num_cases=cases, seed=0)
        one = run_isolated(__file__, ["--worker", "pre_ct_mr_1", str(raw), f"{tmp}/npy1"])
        two = run_isolated(__file__, ["--worker", "pre_ct_mr_2", str(raw), f"{tmp}/npy2"])
        npy = f"{tmp}/npy1"
        npy_raw = run_isolated(__file__, ["--worker", "npy_raw", npy, ""])
        npy_mod = run_isolated(__file__, ["--worker", "npy_module", npy, ""])
        nii_raw = run_isolated(__file__, ["--worker", "nifti_raw", str(raw), ""])
        nii_mod = run_isolated(__file__, ["--worker", "nnunet_module", str(raw), f"{tmp}/cache"])
    tools = markdown_table(
        ["tool", "1 process slices/s", "2 processes slices/s", "scaling 1 -> 2"],
        [
            [
                f"pre_ct_mr, {cases} cases, 256 px ({one['items']} slices)",
                f"{one['rate']:.1f}",
                f"{two['rate']:.1f}",
                f"{two['rate'] / one['rate']:.2f}",
            ]
        ],
    )
    loading = markdown_table(
        ["data module (2 workers)", "raw read /s", "segfm samples/s", "ratio", "note"],
        [
            [
                "NpySliceDataModule, 256 px slices",
                f"{npy_raw['rate']:.0f}",
                f"{npy_mod['rate']:.0f}",
                f"{npy_mod['rate'] / npy_raw['rate']:.2f}",
                "raw: np.load of image + mask, one process",
            ],
            [
                "NnUNetDataModule, 64³ crops at 1.5 mm, cached",
                f"{nii_raw['rate']:.1f}",
                f"{nii_mod['rate']:.1f}",
                f"{nii_mod['rate'] / nii_raw['rate']:.2f}",
                f"raw: nibabel decode of image + label; first epoch adds setup "
                f"{nii_mod['setup_s']:.1f} s ({cases} cases)",
            ],
        ],
    )
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"{cases} synthetic cases; load average at the end: {load}\n")
    print(tools + "\n\n" + loading)


if __name__ == "__main__":
    main()
