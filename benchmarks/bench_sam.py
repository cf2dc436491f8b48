"""segfm's SAM against segment-anything on CPU: forward and forward+backward time and peak memory.

    python benchmarks/bench_sam.py            # vit_b at 1024 px and the tiny network
    python benchmarks/bench_sam.py --only tiny

Every cell is measured in a fresh process with the same weights loaded into both networks:
``forward`` under ``torch.no_grad`` (image encoder, prompt encoder and mask decoder on one box),
``forward+backward`` with gradients of all parameters, ``encoder, 4 images`` the image encoder
alone under ``torch.no_grad`` on a batch of four (how MedSAM's volume inference encodes slices).
The ``bf16 autocast`` passes run both networks under ``torch.autocast("cpu", torch.bfloat16)``
(fast where the CPU has AMX or AVX-512 BF16; ``segfm test --trainer.precision bf16-mixed`` runs
inference so); the relative error of their mask logits against fp32 goes to stderr.
Times are medians of the timed repeats.
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

# name -> (builder overrides shared by both implementations, warmup, repeats)
CONFIGS: dict[str, dict[str, Any]] = {
    "vit_b 1024px": {
        "arch": "vit_b",
        "image_size": 1024,
        "warmup": 1,
        "repeats": 2,
        "modes": (
            "forward",
            "forward+backward",
            "encoder, 4 images",
            "forward, bf16 autocast",
            "encoder, 4 images, bf16 autocast",
        ),
    },
    "tiny 128px": {"arch": "tiny", "image_size": 128, "warmup": 3, "repeats": 10},
}
MODES = ("forward", "forward+backward")
BATCH = 4  # images of the "encoder, N images" mode


def build(impl: str, arch: str, image_size: int) -> torch.nn.Module:
    """The network of ``impl`` (``official`` or ``segfm``)."""
    if impl == "segfm":
        from segfm.models import build_sam

        return build_sam(arch, image_size=image_size)
    from segfm.models.build_sam import tiny_config
    from tests.official import official_sam

    return official_sam(image_size=image_size, **(tiny_config() if arch == "tiny" else {}))


def worker(impl: str, name: str, mode: str, weights: str) -> None:
    """Measure one cell and print its JSON."""
    config = CONFIGS[name]
    torch.manual_seed(0)
    model = build(impl, config["arch"], config["image_size"])
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True), strict=True)
    model.eval()
    size = config["image_size"]
    image = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    box = torch.tensor([[0.1, 0.2, 0.7, 0.8]]) * size

    def run() -> tuple[torch.Tensor, torch.Tensor]:
        if impl == "segfm":
            return model(image, boxes=box)
        embeddings = model.image_encoder(image)
        sparse, dense = model.prompt_encoder(points=None, boxes=box, masks=None)
        pe = model.prompt_encoder.get_dense_pe()
        return model.mask_decoder(embeddings, pe, sparse, dense, multimask_output=False)

    def forward() -> None:
        with torch.no_grad():
            run()

    def forward_backward() -> None:
        logits, iou = run()
        (logits.square().mean() + iou.mean()).backward()
        model.zero_grad(set_to_none=True)

    images = image.expand(BATCH, -1, -1, -1).contiguous()

    def encode_batch() -> None:
        with torch.no_grad():
            model.image_encoder(images)

    base = mode.removesuffix(", bf16 autocast")
    fn = {"forward": forward, "forward+backward": forward_backward}.get(base, encode_batch)
    if base == mode:
        print(json.dumps(time_calls(fn, config["warmup"], config["repeats"])))
        return
    with torch.no_grad():
        want = run()[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        result = time_calls(fn, config["warmup"], config["repeats"])
        with torch.no_grad():
            got = run()[0].float()
    result["rel_error"] = float((got - want).norm() / want.norm())  # of the mask logits
    print(json.dumps(result))


def make_weights(name: str, path: str) -> None:
    """Save seeded official weights for ``name`` (run in a child, see ``peak_rss_mib``)."""
    torch.manual_seed(0)
    config = CONFIGS[name]
    torch.save(build("official", config["arch"], config["image_size"]).state_dict(), path)
    print("{}")


def measure(name: str, weights: Path) -> list[list[str]]:
    """Table rows of one network: forward, then forward+backward."""
    rows = []
    for mode in CONFIGS[name].get("modes", MODES):
        off, ours = (
            run_isolated(__file__, ["--worker", impl, name, mode, str(weights)])
            for impl in ("official", "segfm")
        )
        cpu = f"CPU s {off['median_cpu_s']:.3f} / {ours['median_cpu_s']:.3f}"
        walls = f"official {off['seconds']} segfm {ours['seconds']}"
        print(f"{name} {mode}: wall s {walls}; {cpu}", file=sys.stderr)
        if "rel_error" in ours:
            errors = f"official {off['rel_error']:.1e}, segfm {ours['rel_error']:.1e}"
            print(f"{name} {mode}: mask-logit error against fp32, {errors}", file=sys.stderr)
        rows.append(
            [
                name,
                mode,
                *compare_cells(off, ours),
            ]
        )
    return rows


def main(argv: list[str] | None = None) -> str:
    """Measure every cell and print the markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["vit_b", "tiny"], help="measure one network only")
    parser.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--weights", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(*args.worker)
        return ""
    if args.weights:
        make_weights(*args.weights)
        return ""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, config in CONFIGS.items():
            if args.only and config["arch"] != args.only:
                continue
            weights = Path(tmp) / f"{config['arch']}.pth"
            run_isolated(__file__, ["--weights", name, str(weights)])
            rows += measure(name, weights)
    header = ["network", "pass", "official s", "segfm s", "ratio"]
    header += ["official peak MiB", "segfm peak MiB", "ratio"]
    table = markdown_table(header, rows)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch 1, one box")
    print(f"(load average at the end: {load}; other jobs on the machine distort the times)\n")
    print(table)
    return table


if __name__ == "__main__":
    main()
