"""BiomedParse v2 on CPU: segfm's network against a reference of the official forward.

    python benchmarks/bench_biomedparse.py              # tiny, then the published size
    python benchmarks/bench_biomedparse.py --quick      # tiny only, 1 warm-up + 1 repeat
    python benchmarks/bench_biomedparse.py --sizes full

BiomedParse v2 has no PyPI package, so the "reference" side is
``benchmarks/reference/biomedparse_v2.py``: the official forward re-implemented in the original's
structure and parameter names (see its docstring), checked against segfm in
``tests/benchmarks/test_reference_biomedparse.py``. Both load the same weights (segfm's seeded
network, saved once; strict load, memory-mapped and assigned, so each process holds one copy).

- ``forward``: eval mode, ``no_grad``; segfm ``BiomedParse(images, ids, mask, counts)``, the
  reference ``forward_eval`` (``biomedparse_2D.py``: normalise, prompts, FocalNet, pixel
  decoder, BoltzFormer, edge split). The max abs differences of the mask, edge and existence
  logits of the two are printed.
- ``forward+backward``: train mode; the reference ``forward_train`` (``src/model/biomedparse.py``,
  with FocalNet's configured stochastic depth 0.3 active; segfm has none), then segfm's
  ``BiomedParse.loss_terms`` (existence BCE with pos_weight 3, Dice + BCE of masks and edges
  upsampled bicubically to the label) on a fixed label and ``backward`` to every parameter.

The text encoder runs in both (token ids in, no tokenizer). Every call seeds the global
generator, from which both draw the Boltzmann sampling. Sizes: ``tiny`` (segfm's tiny network,
2 images of 64x64 with 2 prompts each, one thread) and ``full`` (v2, 372M parameters, one
512x512 image with 4 prompts, as the fine-tuning config's ``num_prompts``, all threads).

Not in the main table: at every ``encode_prompts`` the original also embeds 17 class names (81
templates each at evaluation, one at training) that no output uses; the second table times that
on the reference's text encoder alone. Every cell runs in a fresh process; peak memory is its
``ru_maxrss`` (the weights included); times are medians.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import compare_cells, markdown_table, ratio, run_isolated, time_calls

#: size -> image side, images, prompts per image, threads (0: torch's default)
SIZES: dict[str, dict[str, int]] = {
    "tiny": {"side": 64, "batch": 2, "prompts": 2, "threads": 1},
    "full": {"side": 512, "batch": 1, "prompts": 4, "threads": 0},
}
#: (size, pass) -> (warm-up, repeats); --quick: (1, 1)
REPEATS = {
    ("tiny", "forward"): (2, 10),
    ("tiny", "forward+backward"): (2, 5),
    ("full", "forward"): (1, 1),
    ("full", "forward+backward"): (1, 1),
}
PASSES = ("forward", "forward+backward")
SEED = 0


def build(impl: str, size: str) -> torch.nn.Module:
    """The network (on the meta device: the weights are assigned on load)."""
    with torch.device("meta"):
        if impl == "segfm":
            from segfm.models.biomedparse import biomedparse_tiny, biomedparse_v2

            return biomedparse_v2() if size == "full" else biomedparse_tiny()
        from benchmarks.reference.biomedparse_v2 import build_reference, reference_tiny

        return build_reference() if size == "full" else reference_tiny()


def inputs(size: str) -> dict[str, torch.Tensor]:
    """Images in 0..255, token ids (CLIP-like: end of text the largest id), counts, label."""
    spec = SIZES[size]
    g = torch.Generator().manual_seed(1)
    side, batch, n = spec["side"], spec["batch"], spec["batch"] * spec["prompts"]
    length, vocab = (77, 49408) if size == "full" else (16, 49408)
    ids = torch.randint(0, vocab - 1, (n, length), generator=g)
    mask = torch.zeros(n, length, dtype=torch.long)
    for i in range(n):
        end = 4 + 3 * i % 9  # prompts of 5 to 12 tokens
        ids[i, end] = vocab - 1
        mask[i, : end + 1] = 1
    label = torch.zeros(n, 1, side, side, dtype=torch.long)
    label[: n // 2, :, side // 4 : side // 2, side // 3 : 2 * side // 3] = 1  # half are absent
    return {
        "images": torch.rand(batch, 3, side, side, generator=g) * 255,
        "ids": ids,
        "mask": mask,
        "counts": torch.full((batch,), spec["prompts"]),
        "label": label,
    }


def _load(model: torch.nn.Module, weights: str) -> None:
    state = torch.load(weights, map_location="cpu", weights_only=True, mmap=True)
    model.load_state_dict(state, strict=True, assign=True)


def worker(impl: str, size: str, mode: str, weights: str, out: str, quick: bool) -> None:
    """Measure one cell; save the outputs of the first call; print the timing JSON."""
    from segfm.methods.biomedparse import BiomedParse

    if SIZES[size]["threads"]:
        torch.set_num_threads(SIZES[size]["threads"])
    model = build(impl, size)
    _load(model, weights)
    x = inputs(size)
    loss_of = BiomedParse(arch="tiny", export_official=False).loss_terms
    train = mode == "forward+backward"
    model.train(train)

    def run() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        torch.manual_seed(SEED)
        if impl == "segfm":
            o = model(x["images"], x["ids"], x["mask"], x["counts"])
            return o.masks, o.edges, o.existence
        batch = {
            "image": x["images"],
            "tokens": {"input_ids": x["ids"], "attention_mask": x["mask"]},
            "num_prompts": x["counts"],
        }
        p = model(batch, mode="train" if train else "eval")["predictions"]
        return p["pred_gmasks"], p["edge_masks"], p["object_existence"]

    saved: list[tuple[torch.Tensor, ...]] = []

    def step() -> None:
        if not train:
            with torch.no_grad():
                outputs = run()
        else:
            outputs = run()
            loss_of(*outputs, x["label"])["loss"].backward()
            model.zero_grad(set_to_none=True)
        if not saved:
            saved.append(tuple(t.detach() for t in outputs))

    warmup, repeats = (1, 1) if quick else REPEATS[(size, mode)]
    result = time_calls(step, warmup, repeats)
    torch.save(saved[0], out)
    print(json.dumps(result))


def class_worker(size: str, weights: str, quick: bool) -> None:
    """Time the reference's unused class-name embeddings (eval: x81 templates; train: x1)."""
    from benchmarks.reference.biomedparse_v2 import CLASSES, NUM_TEMPLATES

    if SIZES[size]["threads"]:
        torch.set_num_threads(SIZES[size]["threads"])
    encoder = build("reference", size).sem_seg_head.predictor.language_encoder
    prefix = "sem_seg_head.predictor.language_encoder."
    state = torch.load(weights, map_location="cpu", weights_only=True, mmap=True)
    encoder.load_state_dict(
        {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)},
        strict=True,
        assign=True,
    )
    length = encoder.max_token_num
    g = torch.Generator().manual_seed(2)
    result = {}
    for name, templates, is_eval in (("eval", NUM_TEMPLATES, True), ("train", 1, False)):
        tokens = []
        for _ in CLASSES:
            ids = torch.randint(0, 49407, (templates, length), generator=g)
            ids[:, 6] = 49407
            tokens.append({"input_ids": ids, "attention_mask": (ids >= 0).long()})
        warmup, repeats = (0, 1) if quick or (is_eval and size == "full") else (1, 3)
        timing = time_calls(
            lambda t=tokens, e=is_eval: encoder.get_text_embeddings(t, is_eval=e), warmup, repeats
        )
        result[name] = timing
    print(json.dumps(result))


def make_weights(size: str, path: str) -> None:
    """segfm's seeded network, saved (in a child: no measurement sees this memory)."""
    from segfm.models.biomedparse import biomedparse_tiny, biomedparse_v2

    torch.manual_seed(SEED)
    torch.save((biomedparse_v2() if size == "full" else biomedparse_tiny()).state_dict(), path)
    print("{}")


def measure(size: str, tmp: Path, quick: bool) -> tuple[list[list[str]], list[str], list[str]]:
    """Main-table rows, difference lines and the class-embedding row of one size."""
    weights = tmp / f"{size}.pth"
    run_isolated(__file__, ["--weights", size, str(weights)])
    spec = SIZES[size]
    name = f"{size} {spec['side']}², batch {spec['batch']} x {spec['prompts']} prompts"
    rows, diffs = [], []
    flag = ["--quick"] if quick else []
    for mode in PASSES:
        cells, outs = {}, {}
        for impl in ("reference", "segfm"):
            outs[impl] = tmp / f"{size}-{mode}-{impl}.pt"
            args = ["--worker", impl, size, mode, str(weights), str(outs[impl]), *flag]
            cells[impl] = run_isolated(__file__, args, timeout=3600)
            print(f"{name} {mode} {impl}: {cells[impl]}", file=sys.stderr)
        ref, ours = cells["reference"], cells["segfm"]
        rows.append(
            [
                name,
                mode,
                *compare_cells(ref, ours),
            ]
        )
        a, b = (torch.load(outs[k], weights_only=True) for k in ("reference", "segfm"))
        delta = ", ".join(
            f"{label} {(x - y).abs().max().item():.2e}"
            for label, x, y in zip(("masks", "edges", "existence"), a, b, strict=True)
        )
        note = " (reference has stochastic depth in train mode)" if mode != "forward" else ""
        diffs.append(f"- {name}, {mode}: max abs difference {delta}{note}")
    extra = run_isolated(__file__, ["--classes", size, str(weights), *flag], timeout=3600)
    forward_s = float(rows[0][2])
    classes = [
        name,
        f"{extra['eval']['median_s']:.3f}",
        ratio(extra["eval"]["median_s"], forward_s),
        f"{extra['train']['median_s']:.3f}",
        ratio(extra["train"]["median_s"], forward_s),
    ]
    return rows, diffs, classes


def main(argv: list[str] | None = None) -> str:
    """Measure every cell and print the markdown tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny only, 1 warm-up + 1 repeat")
    parser.add_argument("--sizes", default="tiny,full", help="tiny and/or full (comma-separated)")
    parser.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    parser.add_argument("--classes", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--weights", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sizes = ["tiny"] if args.quick else args.sizes.split(",")
    if not set(sizes) <= set(SIZES):
        parser.error(f"--sizes takes tiny and/or full, got {args.sizes!r}")
    if args.weights:
        make_weights(*args.weights)
        return ""
    if args.worker:
        worker(*args.worker, quick=args.quick)
        return ""
    if args.classes:
        class_worker(*args.classes, quick=args.quick)
        return ""
    rows, diffs, classes = [], [], []
    with tempfile.TemporaryDirectory() as folder:
        for size in sizes:
            r, d, c = measure(size, Path(folder), args.quick)
            rows, diffs, classes = rows + r, diffs + d, [*classes, c]
    header = ["network, input", "pass", "reference s", "segfm s", "ratio"]
    header += ["reference peak MiB", "segfm peak MiB", "ratio"]
    table = markdown_table(header, rows)
    header = ["network, input", "eval: 17 x 81 prompts, s", "/ reference forward"]
    header += ["train: 17 prompts, s", "/ reference forward"]
    extra = markdown_table(header, classes)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    reps = "--quick: 1 warm-up + 1 repeat" if args.quick else f"warm-up, repeats: {REPEATS}"
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, tiny: 1 thread, full: {threads} ({reps}; load average")
    print(f"at the end: {load}; other jobs distort the times). 'reference' = the official")
    print("forward re-implemented in benchmarks/reference/biomedparse_v2.py (no PyPI package).\n")
    print(table + "\n")
    print("Outputs of the first call, same weights and seed:\n")
    print("\n".join(diffs) + "\n")
    print("The original's class-name embeddings (computed at every call, used by no output),")
    print("reference text encoder only, against the reference forward above:\n")
    print(extra)
    return table + "\n\n" + extra


if __name__ == "__main__":
    main()
