"""SAM / SAM++ anatomical embedding network on CPU: segfm against the official forward.

    python benchmarks/bench_embedding.py                  # tiny, then the published size
    python benchmarks/bench_embedding.py --quick          # tiny only, one repeat (smoke test)
    python benchmarks/bench_embedding.py --stage sam_pp   # with the SAM++ semantic head

The anatomical embedding family has no PyPI package, so the "official" side is
``benchmarks/reference/anatomical_embedding.py``, a plain-torch re-implementation of the
original network forward (``Sam.extract_feat``) in its own structure and parameter names. Both
networks get the same weights: segfm's network, seeded, exported to the released (mmcv) layout
with ``segfm.checkpoints.anatomical_embedding.save_official``, loaded strictly into both.

Sizes: ``full`` is the training input of ``configs/sam/sam_NIHLN.py`` (``SAM.pth``): 6 pairs
per GPU (``samples_per_gpu=6``), which the original's collate flattens into a batch of 12 views
of 96x96x32 voxels (y, x, z), fed as ``[12, 1, 32, 96, 96]`` (z, y, x); released width (64-512
channels, 128-d embeddings). ``tiny``: segfm's tiny network (4-32 channels, 16-d) on one pair
``[2, 1, 16, 32, 32]``, on one thread (OpenMP waits swamp such small kernels on a shared
machine).

``forward`` runs in eval mode under ``torch.no_grad``; ``forward+backward`` runs in train mode
(batch statistics, as in training) with the sum of all embedding entries as the loss (a sum of
squares would be constant: the embeddings have unit norm) and gradients of all parameters. The
reference's float16 output cast is switched off (segfm keeps float32; on CPU the original would
run in float32 too). Every cell runs in a fresh process; peak memory is its ``ru_maxrss``; times
are medians. The last column is the largest absolute difference, segfm vs reference, of the
embeddings (eval forward) or of the parameter gradients (next to the largest gradient: the loss
sums every voxel, so gradients reach 1e3-1e5, and float32 sums taken in another order differ
in the last bits).
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

from benchmarks.common import compare_cells, markdown_table, run_isolated, time_calls

#: size -> network width, embedding channels, input [N, 1, Z, Y, X], threads (None: default)
SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"base": 4, "embed": 16, "input": (2, 1, 16, 32, 32), "threads": 1},
    "full": {"base": 64, "embed": 128, "input": (12, 1, 32, 96, 96), "threads": None},
}
#: size -> pass -> (warmup, repeats); --quick: (0, 1)
REPEATS = {
    "tiny": {"forward": (2, 10), "forward+backward": (2, 10)},
    "full": {"forward": (1, 2), "forward+backward": (1, 1)},
}
IMPLS = ("reference", "segfm")


def build(impl: str, size: str, stage: str) -> torch.nn.Module:
    """The network of ``impl`` at ``size`` (random weights)."""
    spec, semantic = SIZES[size], stage == "sam_pp"
    if impl == "segfm":
        from segfm.models.anatomical_embedding import sam_embedding, tiny_embedding

        if size == "full":
            return sam_embedding(stage)  # type: ignore[arg-type]
        return tiny_embedding(semantic, base_channels=spec["base"], embed_dim=spec["embed"])
    from benchmarks.reference.anatomical_embedding import build_sam

    return build_sam(semantic, spec["base"], spec["embed"], half_outputs=False)


def outputs(impl: str, model: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """The embeddings in the order fine, coarse (, semantic)."""
    out = model(x)
    return list(out.values()) if impl == "segfm" else out


def worker(impl: str, size: str, stage: str, mode: str, weights: str, dump: str, quick: bool):
    """Measure one cell, save its outputs (or gradients) to ``dump``, print its JSON."""
    from segfm.checkpoints.anatomical_embedding import load_into

    spec = SIZES[size]
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    model = build(impl, size, stage)
    if impl == "segfm":
        load_into(model, weights)
    else:  # as mmcv's load_checkpoint: the "state_dict" entry, strict
        model.load_state_dict(torch.load(weights, weights_only=True)["state_dict"], strict=True)
    x = torch.randn(spec["input"], generator=torch.Generator().manual_seed(1))

    def forward() -> None:
        with torch.no_grad():
            outputs(impl, model, x)

    def forward_backward() -> None:
        model.zero_grad(set_to_none=True)
        sum(o.sum() for o in outputs(impl, model, x)).backward()  # type: ignore[union-attr]

    model.train(mode != "forward")
    fn = forward if mode == "forward" else forward_backward
    warmup, repeats = (0, 1) if quick else REPEATS[size][mode]
    result = time_calls(fn, warmup, repeats)
    if mode == "forward":
        with torch.no_grad():
            torch.save(outputs(impl, model, x), dump)
    else:
        torch.save({k: p.grad for k, p in model.named_parameters()}, dump)
    print(json.dumps(result))


def make_weights(size: str, stage: str, path: str) -> None:
    """Seeded segfm weights in the official layout (in a child: no cell sees this memory)."""
    from segfm.checkpoints.anatomical_embedding import save_official

    torch.manual_seed(0)
    save_official(build("segfm", size, stage), path)
    print("{}")


def max_diff(a: Any, b: Any) -> tuple[float, float]:
    """Largest absolute difference of two lists (outputs) or dicts (gradients) of tensors.

    Returns:
        The difference and the largest absolute value of ``a`` (its scale).
    """
    if isinstance(a, dict):
        if set(a) != set(b):
            msg = f"gradients of different parameters: {sorted(set(a) ^ set(b))[:5]}"
            raise ValueError(msg)
        a, b = [a[k] for k in sorted(a)], [b[k] for k in sorted(a)]
    pairs = list(zip(a, b, strict=True))
    diff = max(float((x.float() - y.float()).abs().max()) for x, y in pairs)
    return diff, max(float(x.abs().max()) for x, _ in pairs)


def measure(size: str, stage: str, tmp: Path, quick: bool) -> list[list[str]]:
    """Rows of one size: forward, then forward+backward."""
    weights = tmp / f"{size}.pth"
    run_isolated(__file__, ["--weights", size, stage, str(weights)])
    spec, rows = SIZES[size], []
    shape = "x".join(map(str, spec["input"][2:]))
    name = f"{stage} {size}, {spec['input'][0]} x {shape} (z, y, x)"
    for mode in REPEATS[size]:
        cells, dumps = {}, {}
        for impl in IMPLS:
            dumps[impl] = tmp / f"{size}-{mode}-{impl}.pt"
            args = [impl, size, stage, mode, str(weights), str(dumps[impl])]
            cells[impl] = run_isolated(
                __file__, ["--worker", *args, *(["--quick"] if quick else [])], timeout=7200
            )
            print(f"{name} {mode} {impl}: {cells[impl]}", file=sys.stderr)
        diff, scale = max_diff(*(torch.load(dumps[i], weights_only=True) for i in IMPLS))
        what = "outputs" if mode == "forward" else f"grads; max abs grad {scale:.0f}"
        ref, ours = cells["reference"], cells["segfm"]
        rows.append(
            [
                name,
                mode,
                *compare_cells(ref, ours),
                f"{diff:.1e} ({what})",
            ]
        )
        for dump in dumps.values():
            dump.unlink()
    return rows


def main(argv: list[str] | None = None) -> str:
    """Measure every cell and print the markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny size only, one repeat")
    parser.add_argument("--sizes", default="tiny,full", help="tiny and/or full (comma-separated)")
    parser.add_argument("--stage", default="sam", choices=("sam", "sam_pp"))
    parser.add_argument("--worker", nargs=6, help=argparse.SUPPRESS)
    parser.add_argument("--weights", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sizes = ["tiny"] if args.quick else args.sizes.split(",")
    if not set(sizes) <= set(SIZES):
        parser.error(f"--sizes takes tiny and/or full, got {args.sizes!r}")
    if args.worker:
        worker(*args.worker, quick=args.quick)
        return ""
    if args.weights:
        make_weights(*args.weights)
        return ""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            rows += measure(size, args.stage, Path(tmp), args.quick)
    header = ["network, input", "pass", "reference s", "segfm s", "ratio"]
    header += ["reference peak MiB", "segfm peak MiB", "ratio", "max abs diff"]
    table = markdown_table(header, rows)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    repeats = "--quick: 1 repeat, no warmup" if args.quick else f"(warmup, repeats) {REPEATS}"
    print(f"torch {torch.__version__}, tiny: 1 thread, full: {torch.get_num_threads()} threads")
    print(f"({repeats}; load average at the end: {load}; other jobs distort the times).")
    print("reference = benchmarks/reference/anatomical_embedding.py (official forward, no PyPI")
    print("package); full = sam_NIHLN.py training batch: 6 pairs = 12 views.\n")
    print(table)
    return table


if __name__ == "__main__":
    main()
