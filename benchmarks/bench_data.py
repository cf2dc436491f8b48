"""Data pipeline and tools on CPU: does loading keep up with reading the files?

    python benchmarks/bench_data.py            # 12 generated cases
    python benchmarks/bench_data.py --quick    # 4 cases

On a dataset made by ``data_tools.synthetic``:

- ``data_tools.pre_ct_mr`` at 256 px with 1 and 2 processes: slices written per second;
- ``NpySliceDataModule`` (2 workers): training samples per second against reading the same
  ``.npy`` files with ``np.load`` in one process;
- ``NnUNetDataModule`` (2 workers, 1.5 mm, 64³ crops): ``setup`` (decoding, resampling and
  caching every case: the first epoch's extra cost), then training samples per second from the
  cache, against decoding the same NIfTI files with nibabel in one process;
- ``BiomedParseDataModule`` (2 workers, 512 px 2.5D slices, no augmentation) on volumes of
  ``data_tools.synthetic_npz``: ``source="npz"`` without a cache (each slice decompresses its
  volume), with the per-worker volume cache, with the cache and ``volume_chunk=4``, and
  ``source="processed"`` (PNGs of ``data_tools.process_2d``), against ``np.load`` of the npz
  arrays (counted in slices: every slice of a volume once it is decoded) and against reading the
  PNGs with Pillow;
- ``M3DSegDataModule`` (2 workers, 32x128x128 crops, no pseudo masks) on cases of
  ``data_tools.build_dataset`` over the synthetic CT, against ``np.load`` of ``image.npy`` and
  ``scipy.sparse.load_npz`` of the mask in one process.

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
    if kind.startswith("bmp_"):
        return _biomedparse(kind[4:], root)
    if kind.startswith("m3d_"):
        return _m3d(kind[4:], root)
    msg = f"unknown measurement {kind}"
    raise ValueError(msg)


def _biomedparse(kind: str, root: str) -> dict[str, float]:
    """BiomedParse: ``raw_npz``, ``raw_png``, or the module ``npz_<MiB>_<chunk>``/``processed``."""
    import numpy as np
    from PIL import Image

    if kind == "raw_npz":
        files = sorted(Path(root).glob("*/train/*.npz"))
        start, slices = time.perf_counter(), 0
        for f in files:
            with np.load(f) as npz:
                slices += npz["imgs"].shape[0]  # every volume is cut along z
                npz["gts"]
        return {"rate": slices / (time.perf_counter() - start), "items": slices}
    if kind == "raw_png":
        files = sorted(Path(root).glob("*/processed*/train/*.png"))
        start = time.perf_counter()
        for f in files:
            with Image.open(f) as png:
                np.asarray(png.convert("RGB"))
            with Image.open(f.parent.with_name("train_mask") / f.name) as png:
                np.asarray(png)
        return {"rate": len(files) / (time.perf_counter() - start), "items": len(files)}
    from segfm.data.biomedparse import BiomedParseDataModule

    options: dict[str, object] = {"source": "processed"}
    if kind.startswith("npz"):
        _, cache, chunk = kind.split("_")
        options = {"source": "npz", "cache_volumes_mb": int(cache), "volume_chunk": int(chunk)}
    module = BiomedParseDataModule(
        root, batch_size=8, num_workers=2, size=512, val_ratio=0, augment=False, **options
    )
    module.setup("fit")
    return {"rate": _loader_rate(module)}


def _m3d(kind: str, root: str) -> dict[str, float]:
    """M3D-Seg: ``raw`` (np.load + load_npz of every training case) or ``module``."""
    from segfm.data.io.m3d_seg import read_dataset

    if kind == "raw":
        import numpy as np
        from scipy import sparse

        cases = read_dataset(root, "0000").train
        start = time.perf_counter()
        for case in cases:
            np.load(case.image)
            sparse.load_npz(case.mask).toarray()
        return {"rate": len(cases) / (time.perf_counter() - start), "items": len(cases)}
    from segfm.data.m3d_seg import M3DSegDataModule

    module = M3DSegDataModule(
        root,
        ["0000"],
        batch_size=2,
        num_workers=2,
        spatial_size=(32, 128, 128),
        use_pseudo_masks=False,
    )
    module.setup("fit")
    return {"rate": _loader_rate(module)}


def _biomedparse_rows(tmp: Path, cases: int) -> list[list[str]]:
    """The BiomedParse rows: make the npz volumes and their PNGs, measure each variant."""
    from data_tools.process_2d import process
    from data_tools.synthetic_npz import make_dataset

    root = str(make_dataset(tmp / "bmp", num_cases=max(1, cases // 2), num_test=0))
    process(root, size=512, workers=2, progress=False)

    def run(kind: str) -> dict[str, float]:
        return run_isolated(__file__, ["--worker", f"bmp_{kind}", root, ""])

    raw_npz, raw_png = run("raw_npz"), run("raw_png")
    variants = [
        ("npz, no cache (every slice decodes its volume)", "npz_0_1", raw_npz),
        ("npz, volume cache 512 MiB per worker", "npz_512_1", raw_npz),
        ("npz, volume cache + volume_chunk 4", "npz_512_4", raw_npz),
        ("processed PNGs", "processed", raw_png),
    ]
    rows = []
    for name, kind, raw in variants:
        rate = run(kind)["rate"]
        source = "np.load of imgs + gts, per slice" if raw is raw_npz else "Pillow read of PNGs"
        rows.append(
            [
                f"BiomedParseDataModule, 512 px slices, {name}",
                f"{raw['rate']:.0f}",
                f"{rate:.0f}",
                f"{rate / raw['rate']:.2f}",
                f"raw: {source} ({raw['items']:.0f} slices), one process",
            ]
        )
    return rows


def _m3d_rows(tmp: Path, raw: Path) -> list[list[str]]:
    """The M3D-Seg row: build the dataset from the synthetic NIfTI, measure module and raw."""
    from data_tools.build_dataset import build_dataset
    from data_tools.synthetic import LABELS

    categories = [name for name, value in sorted(LABELS.items(), key=lambda kv: kv[1]) if value]
    build_dataset(
        raw / "imagesTr", raw / "labelsTr", "0000", categories, tmp / "m3d", 0.0, progress=False
    )
    root = str(tmp / "m3d")
    base = run_isolated(__file__, ["--worker", "m3d_raw", root, ""])
    module = run_isolated(__file__, ["--worker", "m3d_module", root, ""])
    return [
        [
            "M3DSegDataModule, 32x128x128 crops",
            f"{base['rate']:.1f}",
            f"{module['rate']:.1f}",
            f"{module['rate'] / base['rate']:.2f}",
            f"raw: np.load + sparse.load_npz ({base['items']:.0f} cases), one process",
        ]
    ]


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
        bmp = _biomedparse_rows(Path(tmp), cases)
        m3d = _m3d_rows(Path(tmp), raw)
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
            *bmp,
            *m3d,
        ],
    )
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"{cases} synthetic cases; load average at the end: {load}\n")
    print(tools + "\n\n" + loading)


if __name__ == "__main__":
    main()
