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
- ``NpzDataModule(mode="slices25d")`` (2 workers, 512 px 2.5D slices, no augmentation) on
  volumes of ``data_tools.synthetic_npz``: without a cache (each slice decompresses its
  volume), with the per-worker volume cache, with the cache and ``volume_chunk=4``, and
  ``PngSliceDataModule`` (PNGs of ``data_tools.process_2d``), against ``np.load`` of the npz
  arrays (counted in slices: every slice of a volume once it is decoded) and against reading the
  PNGs with Pillow;
- ``M3DSegDataModule`` (2 workers, 32x128x128 crops, no pseudo masks) on cases of
  ``data_tools.build_dataset`` over the synthetic CT, against ``np.load`` of ``image.npy`` and
  ``scipy.sparse.load_npz`` of the mask in one process.

Each module is measured twice: loading in the main process (``num_workers=0``: the work per
sample, reading included) and with 2 loader workers. The row "loader alone" sends the npy
module's samples from memory through the same 2-worker loader: no reading and no work, only
collation and the transfer between processes, the most any module can deliver on the machine.
``ratio`` is segfm with 2 workers / raw read (goal >= 0.9). Each row runs in a fresh process.
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


WORKERS = 2  # loader processes of the module measurements; "<kind>@0" loads in the main process


def worker(kind: str, root: str, out: str) -> dict[str, float]:
    """One measurement (runs in a fresh process)."""
    global WORKERS
    import nibabel as nib
    import numpy as np

    if "@" in kind:
        kind, workers = kind.split("@")
        WORKERS = int(workers)
    if kind == "ceiling":
        return _ceiling(root)

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

        module = NpySliceDataModule(root, batch_size=8, num_workers=WORKERS, val_fraction=0.0)
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
            num_workers=WORKERS,
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


class _InMemory:
    """``length`` samples, cycling through a few held in memory (no reading, no work)."""

    def __init__(self, samples: list[dict], length: int) -> None:
        self.samples, self.length = samples, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        return self.samples[index % len(self.samples)]


def _ceiling(root: str) -> dict[str, float]:
    """The loader alone: npy slice samples, from memory, through the same training loader."""
    from segfm.data import NpySliceDataModule

    module = NpySliceDataModule(root, batch_size=8, num_workers=WORKERS, val_fraction=0.0)
    module.setup("fit")
    train = module.datasets["train"]
    module.datasets["train"] = _InMemory([train[i] for i in range(8)], len(train))
    return {"rate": _loader_rate(module)}


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
    from segfm.data import NpzDataModule, PngSliceDataModule

    common = {"batch_size": 8, "num_workers": WORKERS, "image_size": 512, "val_fraction": 0}
    if kind.startswith("npz"):
        _, cache, chunk = kind.split("_")
        module: NpzDataModule = NpzDataModule(
            root,
            mode="slices25d",
            augment=False,
            cache_volumes_mb=int(cache),
            volume_chunk=int(chunk),
            **common,
        )
    else:
        module = PngSliceDataModule(root, augment=False, **common)
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
    from segfm.data.datamodules.m3d_seg import M3DSegDataModule

    module = M3DSegDataModule(
        root,
        ["0000"],
        batch_size=2,
        num_workers=WORKERS,
        spatial_size=(32, 128, 128),
        use_pseudo_masks=False,
    )
    module.setup("fit")
    return {"rate": _loader_rate(module)}


def _row(name: str, kind: str, root: str, out: str, raw: dict, note: str) -> list[str]:
    """One data module row: the module in the main process and with 2 workers, against raw."""
    inline = run_isolated(__file__, ["--worker", f"{kind}@0", root, out])
    workers = run_isolated(__file__, ["--worker", f"{kind}@2", root, out])
    if "setup_s" in workers:
        note += f"; first epoch adds setup {workers['setup_s']:.1f} s"
    return [
        name,
        f"{raw['rate']:.1f}",
        f"{inline['rate']:.1f}",
        f"{workers['rate']:.1f}",
        f"{workers['rate'] / raw['rate']:.2f}",
        note,
    ]


def _biomedparse_rows(tmp: Path, cases: int) -> list[list[str]]:
    """The BiomedParse rows: make the npz volumes and their PNGs, measure each variant."""
    from data_tools.process_2d import process
    from data_tools.synthetic_npz import make_dataset

    root = str(make_dataset(tmp / "bmp", num_cases=max(1, cases // 2), num_test=0))
    process(root, size=512, workers=2, progress=False)
    raw_npz = run_isolated(__file__, ["--worker", "bmp_raw_npz", root, ""])
    raw_png = run_isolated(__file__, ["--worker", "bmp_raw_png", root, ""])
    npz_note = f"raw: np.load of imgs + gts, per slice ({raw_npz['items']:.0f} slices)"
    png_note = f"raw: Pillow read of the PNGs ({raw_png['items']:.0f} slices)"
    variants = [
        ("NpzDataModule slices25d, no cache (every slice decodes its volume)", "npz_0_1"),
        ("NpzDataModule slices25d, volume cache 512 MiB per worker", "npz_512_1"),
        ("NpzDataModule slices25d, volume cache + volume_chunk 4", "npz_512_4"),
        ("PngSliceDataModule (processed PNGs)", "processed"),
    ]
    return [
        _row(
            f"{name}, 512 px 2.5D slices",
            f"bmp_{kind}",
            root,
            "",
            raw_npz if kind.startswith("npz") else raw_png,
            npz_note if kind.startswith("npz") else png_note,
        )
        for name, kind in variants
    ]


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
    note = f"raw: np.load + sparse.load_npz ({base['items']:.0f} cases)"
    return [_row("M3DSegDataModule, 32x128x128 crops", "m3d_module", root, "", base, note)]


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
        nii_raw = run_isolated(__file__, ["--worker", "nifti_raw", str(raw), ""])
        rows = [
            _row(
                "NpySliceDataModule, 256 px slices",
                "npy_module",
                npy,
                "",
                npy_raw,
                f"raw: np.load of image + mask ({npy_raw['items']:.0f} slices)",
            ),
            _row(
                "loader alone: the same samples from memory",
                "ceiling",
                npy,
                "",
                npy_raw,
                "no reading, no work: what the loader itself delivers",
            ),
            _row(
                "NnUNetDataModule, 64³ crops at 1.5 mm, cached",
                "nnunet_module",
                str(raw),
                f"{tmp}/cache",
                nii_raw,
                f"raw: nibabel decode of image + label ({cases} cases)",
            ),
            *_biomedparse_rows(Path(tmp), cases),
            *_m3d_rows(Path(tmp), raw),
        ]
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
    header = ["data module", "raw read /s (1 process)", "segfm /s, main process"]
    header += ["segfm /s, 2 workers", "ratio (2 workers / raw)", "note"]
    loading = markdown_table(header, rows)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"{cases} synthetic cases; load average at the end: {load}\n")
    print(tools + "\n\n" + loading)


if __name__ == "__main__":
    main()
