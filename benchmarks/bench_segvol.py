"""SegVol on CPU: segfm's encode-once-decode-all against the original scheme, same network.

    python benchmarks/bench_segvol.py            # tiny, then the published sizes
    python benchmarks/bench_segvol.py --quick    # tiny only, one repeat (smoke test)
    python benchmarks/bench_segvol.py --sizes full --parts infer --overlap 0 --categories 2

SegVol has no package on PyPI, so the "original" side is segfm's own network (the official 474
parameter names, same weights, same inputs, MONAI's einsum attention as in SegVol's ViT instead
of segfm's SDPA) driven the way SegVol's code drives it:

- training step: SegVol's ``train.py`` loops over the categories of a batch and, for each,
  re-runs the ViT, decodes the six prompt combinations and the six pseudo-mask passes, and
  steps the optimiser; segfm encodes the batch once and decodes every category and combination
  on that embedding, with one backward and one step (``SegVol._step``). Same prompt rules and
  losses on both sides (the prompts are random draws of those rules);
- inference: SegVol's ``inference_demo.py`` runs zoom-out-zoom-in once per category (a global
  pass and sliding windows each time); segfm runs it once for all categories (one ViT pass per
  window, every category decoded on it). Text prompts, as in the CVPR 2025 text protocol; the
  windows follow the global prediction of the (random) weights, so their count is reported.

Every cell runs in a fresh process (peak RSS is the process's ``ru_maxrss``); times are medians.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import markdown_table, ratio, run_isolated, time_calls

#: size -> arch, network window (D, H, W), training batch, inference volume
SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"arch": "tiny", "roi": (16, 32, 32), "batch": 2, "volume": (48, 96, 96)},
    "full": {"arch": "base", "roi": (32, 256, 256), "batch": 1, "volume": (128, 256, 256)},
}
#: tiny cells run on one thread: on a shared machine, OpenMP's waits swamp such small kernels
CLASSES = ("liver", "kidney", "spleen", "pancreas")
LIMIT_S = 90.0  # the CVPR 2025 protocol's time per class


def build(size: str, clip_dir: str, scheme: str = "segfm") -> Any:
    """The SegVol method of ``size`` (logging detached: no trainer).

    The ``original`` scheme's ViT attends as SegVol's (MONAI's einsum attention, no SDPA).
    """
    from segfm.evaluation.options import Evaluation
    from segfm.methods.segvol import SegVol

    if size == "tiny":
        torch.set_num_threads(1)

    spec = SIZES[size]
    method = SegVol(
        arch=spec["arch"],
        clip_dir=clip_dir,
        roi_size=spec["roi"],
        lr_schedule="constant",
        normalize="none",
        evaluation=Evaluation(save_predictions=False),
    )
    method.log = lambda *a, **k: None  # type: ignore[method-assign]
    for block in method.model.image_encoder.blocks:
        block.attn.use_flash_attention = scheme != "original"
    return method


def _boxes(shape: tuple[int, ...], categories: int) -> list[tuple[slice, ...]]:
    """One cuboid per category, side by side along the last axis, a third of the height deep."""
    d, h, w = shape
    step = w // (categories + 1)
    return [
        (slice(d // 4, 3 * d // 4), slice(h // 3, 2 * h // 3), slice(k * step + 2, (k + 1) * step))
        for k in range(categories)
    ]


def training_batch(size: str, categories: int) -> dict[str, Any]:
    """Volumes at the window size, every category in every sample, pseudo regions in halves."""
    spec = SIZES[size]
    shape, batch = spec["roi"], spec["batch"]
    from segfm.sample import ClassInfo

    label = torch.zeros(batch, 1, *shape, dtype=torch.long)
    for k, box in enumerate(_boxes(shape, categories)):
        label[(slice(None), 0, *box)] = k + 1
    generator = torch.Generator().manual_seed(1)
    image = 0.2 * torch.rand(batch, 1, *shape, generator=generator) + 0.6 * (label > 0)
    pseudo = torch.zeros_like(label)
    pseudo[..., shape[1] // 2 :, :] = 1
    pseudo[..., shape[2] // 2 :] += 2
    names = {k + 1: ClassInfo(CLASSES[k]) for k in range(categories)}
    return {"image": image, "label": label, "pseudo_label": pseudo, "classes": [names] * batch}


def train_worker(scheme: str, size: str, weights: str, clip: str, categories: int, quick: bool):
    """One training step of ``scheme`` (``original``: per category; ``segfm``: once)."""
    torch.manual_seed(0)
    method = build(size, clip, scheme)
    method.model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    method.train()
    params = [p for p in method.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-5)
    batch = training_batch(size, categories)
    calls = {"encode": 0}
    encode = method.model.encode

    def counting(image: torch.Tensor) -> torch.Tensor:
        calls["encode"] += 1
        return encode(image)

    method.model.encode = counting
    method.model.embed_text(["warm-up"])  # the tokenizer loads lazily: not part of a step

    def step(sub: dict[str, Any]) -> None:
        loss = method._step(sub, 0, "train")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def run() -> None:
        torch.manual_seed(0)
        if scheme == "segfm":
            step(batch)
            return
        for c in range(1, categories + 1):  # train.py: each organ its own forward and step
            label = batch["label"]
            step(batch | {"label": torch.where(label == c, label, torch.zeros_like(label))})

    warmup, repeats = (0, 1) if size == "full" else (1, 1) if quick else (1, 3)
    result = time_calls(run, warmup, repeats)
    result["encodes"] = calls["encode"] // (warmup + repeats)
    print(json.dumps(result))


def infer_worker(
    scheme: str, size: str, weights: str, clip: str, categories: int, overlap: float, quick: bool
):
    """Zoom-out-zoom-in of every category by text (``original``: one run per category)."""
    from segfm.inference.zoom import ClassPrompts, ZoomOptions, zoom_out_zoom_in

    torch.manual_seed(0)
    method = build(size, clip, scheme)
    method.model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    model = method.model.eval()
    shape = SIZES[size]["volume"]
    image = 0.2 * torch.rand(1, *shape, generator=torch.Generator().manual_seed(1))
    for box in _boxes(shape, categories):
        image[(0, *box)] += 0.6
    calls = {"encode": 0}
    encode = model.encode

    def counting(volume: torch.Tensor) -> torch.Tensor:
        calls["encode"] += volume.shape[0]
        return encode(volume)

    model.encode = counting
    model.embed_text(["warm-up"])  # the tokenizer loads lazily: not part of the inference

    def run() -> None:
        text = model.embed_text(list(CLASSES[:categories]))
        prompts = [ClassPrompts(text[k]) for k in range(categories)]
        groups = [prompts] if scheme == "segfm" else [[p] for p in prompts]
        for group in groups:
            zoom_out_zoom_in(model, image, group, ZoomOptions(overlap=overlap))

    warmup, repeats = (0, 1) if size == "full" else (1, 1) if quick else (1, 2)
    result = time_calls(run, warmup, repeats)
    result["encodes"] = calls["encode"] // (warmup + repeats)
    print(json.dumps(result))


def make_inputs(size: str, weights: str, clip: str) -> None:
    """Seeded weights and a tiny CLIP tokenizer (in a child: no measurement sees this memory)."""
    from data_tools.tiny_clip import write_tiny_clip

    write_tiny_clip(Path(clip))
    torch.manual_seed(0)
    torch.save(build(size, clip).model.state_dict(), weights)
    print("{}")


def _cells(kind: str, size: str, tmp: Path, args: argparse.Namespace) -> dict[str, dict]:
    weights, clip = tmp / f"{size}.pth", tmp / "clip"
    if not weights.is_file():
        run_isolated(__file__, ["--inputs", size, str(weights), str(clip)])
    extra = [str(args.categories)] + ([str(args.overlap)] if kind == "infer" else [])
    out = {}
    for scheme in ("original", "segfm"):
        cell = [kind, scheme, size, str(weights), str(clip), *extra]
        out[scheme] = run_isolated(
            __file__, ["--worker", *cell, *(["--quick"] if args.quick else [])], timeout=7200
        )
        print(f"{kind} {size} {scheme}: {out[scheme]}", file=sys.stderr)
    return out


def _train_row(size: str, cells: dict[str, dict], categories: int) -> list[str]:
    spec, off, ours = SIZES[size], cells["original"], cells["segfm"]
    roi = "x".join(map(str, spec["roi"]))
    return [
        f"{spec['arch']} {roi}, batch {spec['batch']}, {categories} classes",
        f"{off['encodes']} / {ours['encodes']}",
        f"{off['median_s']:.3f}",
        f"{ours['median_s']:.3f}",
        ratio(ours["median_s"], off["median_s"]),
        f"{off['peak_rss_mib']:.0f}",
        f"{ours['peak_rss_mib']:.0f}",
        ratio(ours["peak_rss_mib"], off["peak_rss_mib"]),
    ]


def _infer_row(size: str, cells: dict[str, dict], categories: int) -> list[str]:
    spec, off, ours = SIZES[size], cells["original"], cells["segfm"]
    roi, volume = ("x".join(map(str, spec[k])) for k in ("roi", "volume"))
    per_off, per_ours = off["median_s"] / categories, ours["median_s"] / categories
    return [
        f"{spec['arch']} on {volume}, window {roi}, {categories} classes",
        f"{off['encodes']} / {ours['encodes']}",
        f"{per_off:.3f}",
        f"{per_ours:.3f}",
        ratio(per_ours, per_off),
        "yes" if per_ours <= LIMIT_S else "no",
        f"{off['peak_rss_mib']:.0f}",
        f"{ours['peak_rss_mib']:.0f}",
        ratio(ours["peak_rss_mib"], off["peak_rss_mib"]),
    ]


def measure(args: argparse.Namespace) -> tuple[list[list[str]], list[list[str]]]:
    """Rows of the training table and of the inference table."""
    sizes = ["tiny"] if args.quick else args.sizes.split(",")
    rows: dict[str, list[list[str]]] = {"train": [], "infer": []}
    with tempfile.TemporaryDirectory() as folder:
        for size in sizes:
            for kind, row in (("train", _train_row), ("infer", _infer_row)):
                if kind in args.parts.split(","):
                    cells = _cells(kind, size, Path(folder), args)
                    rows[kind].append(row(size, cells, args.categories))
    return rows["train"], rows["infer"]


def main(argv: list[str] | None = None) -> str:
    """Measure every cell and print the two markdown tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny size only, one repeat")
    parser.add_argument("--categories", type=int, default=3, help="classes per volume (1-4)")
    parser.add_argument("--overlap", type=float, default=0.5, help="zoom-in window overlap")
    parser.add_argument("--sizes", default="tiny,full", help="tiny and/or full (comma-separated)")
    parser.add_argument("--parts", default="train,infer", help="train and/or infer")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--inputs", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not 1 <= args.categories <= len(CLASSES):
        parser.error(f"--categories must be in 1..{len(CLASSES)}, got {args.categories}")
    if not set(args.sizes.split(",")) <= set(SIZES):
        parser.error(f"--sizes takes tiny and/or full, got {args.sizes!r}")
    if not set(args.parts.split(",")) <= {"train", "infer"}:
        parser.error(f"--parts takes train and/or infer, got {args.parts!r}")
    if args.inputs:
        make_inputs(*args.inputs)
        return ""
    if args.worker:
        kind, scheme, size, weights, clip, categories, *rest = args.worker
        if kind == "train":
            train_worker(scheme, size, weights, clip, int(categories), args.quick)
        else:
            infer_worker(scheme, size, weights, clip, int(categories), float(rest[0]), args.quick)
        return ""
    train_rows, infer_rows = measure(args)
    header = ["network, input", "ViT passes orig / segfm", "original s", "segfm s", "ratio"]
    header += ["original peak MiB", "segfm peak MiB", "ratio"]
    train = markdown_table(header, train_rows)
    header = ["network, volume", "ViT passes orig / segfm", "original s/class", "segfm s/class"]
    header += ["ratio", f"segfm <= {LIMIT_S:.0f} s", "original peak MiB", "segfm peak MiB"]
    header += ["ratio"]
    infer = markdown_table(header, infer_rows)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    note = "--quick: tiny size, 1 warm-up + 1 repeat" if args.quick else "full size: 1 run"
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, tiny: 1 thread, full: {threads} ({note}; load average")
    print(f"at the end: {load}; other jobs distort the times). 'original' = segfm's network")
    print("driven as SegVol's code drives it (ViT re-run per category / per prompt); no PyPI")
    print("package exists.\n")
    if train_rows:
        print("Training step (one optimiser step per category in the original, one in segfm):\n")
        print(train + "\n")
    if infer_rows:
        print(f"Zoom-out-zoom-in inference from text (overlap {args.overlap}):\n")
        print(infer)
    return train + "\n\n" + infer


if __name__ == "__main__":
    main()
