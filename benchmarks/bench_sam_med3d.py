"""segfm's SAM-Med3D against the official network (medim) on CPU: time and peak memory.

    python benchmarks/bench_sam_med3d.py            # 128³ volume, batch 1
    python benchmarks/bench_sam_med3d.py --quick    # one untimed-warmup-free repeat per cell

Every cell is measured in a fresh process with the same weights loaded into both networks, on
the path SAM-Med3D's ``train.py`` takes: image encoder, prompt encoder on one positive click and
the previous low-res mask (zeros, as at the first click), mask decoder with one mask, logits
upsampled trilinearly to 128³. ``forward`` runs under ``torch.no_grad``; ``forward+backward``
adds a soft Dice loss on the upsampled logits (plus the IoU prediction) and gradients of all
parameters. Times are medians of the timed repeats.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import compare_cells, markdown_table, run_isolated, time_calls

SIZE = 128
# pass -> (warmup, repeats); --quick: (0, 1)
REPEATS = {"forward": (1, 3), "forward+backward": (1, 2)}


def build(impl: str) -> torch.nn.Module:
    """The network of ``impl`` (``official``: medim's SAM-Med3D, or ``segfm``)."""
    if impl == "segfm":
        from segfm.models import sam_med3d

        return sam_med3d(image_size=SIZE)
    import medim

    return medim.create_model("SAM-Med3D", pretrained=False)


def inputs() -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor], torch.Tensor, torch.Tensor]:
    """A z-scored volume, one positive click, a zero previous mask and the target."""
    image = torch.randn(1, 1, SIZE, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    target = torch.zeros(1, 1, SIZE, SIZE, SIZE)
    target[..., 40:90, 50:80, 30:100] = 1.0
    click = (torch.tensor([[[65.0, 65.0, 65.0]]]), torch.tensor([[1]]))
    previous = torch.zeros(1, 1, SIZE // 4, SIZE // 4, SIZE // 4)
    return image, click, previous, target


def worker(impl: str, mode: str, weights: str, quick: bool) -> None:
    """Measure one cell and print its JSON."""
    torch.manual_seed(0)
    model = build(impl)
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True), strict=True)
    model.eval()
    image, click, previous, target = inputs()

    def run() -> tuple[torch.Tensor, torch.Tensor]:
        if impl == "segfm":
            logits, iou = model(image, points=click, masks=previous)
            return model.postprocess(logits, SIZE), iou
        embeddings = model.image_encoder(image)
        sparse, dense = model.prompt_encoder(points=click, boxes=None, masks=previous)
        pe = model.prompt_encoder.get_dense_pe()
        logits, iou = model.mask_decoder(embeddings, pe, sparse, dense, multimask_output=False)
        return F.interpolate(logits, size=(SIZE,) * 3, mode="trilinear", align_corners=False), iou

    def forward() -> None:
        with torch.no_grad():
            run()

    def forward_backward() -> None:
        logits, iou = run()
        prob = logits.sigmoid()
        dice = 2 * (prob * target).sum() / (prob.square().sum() + target.square().sum() + 1e-5)
        (1 - dice + iou.mean()).backward()
        model.zero_grad(set_to_none=True)

    fn = forward if mode == "forward" else forward_backward
    warmup, repeats = (0, 1) if quick else REPEATS[mode]
    print(json.dumps(time_calls(fn, warmup, repeats)))


def make_weights(path: str) -> None:
    """Save seeded official weights (in a child, so no measurement sees this memory)."""
    torch.manual_seed(0)
    torch.save(build("official").state_dict(), path)
    print("{}")


def measure(weights: Path, quick: bool) -> list[list[str]]:
    """Table rows: forward, then forward+backward."""
    rows = []
    name = f"SAM-Med3D {SIZE}³"
    for mode in REPEATS:
        off, ours = (
            run_isolated(
                __file__, ["--worker", impl, mode, str(weights), *(["--quick"] if quick else [])]
            )
            for impl in ("official", "segfm")
        )
        cpu = f"CPU s {off['median_cpu_s']:.3f} / {ours['median_cpu_s']:.3f}"
        walls = f"official {off['seconds']} segfm {ours['seconds']}"
        print(f"{name} {mode}: wall s {walls}; {cpu}", file=sys.stderr)
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
    parser.add_argument("--quick", action="store_true", help="one repeat, no warmup (smoke test)")
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--weights", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(*args.worker, quick=args.quick)
        return ""
    if args.weights:
        make_weights(args.weights)
        return ""
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "sam_med3d.pth"
        run_isolated(__file__, ["--weights", str(weights)])
        rows = measure(weights, args.quick)
    header = ["network", "pass", "official (medim) s", "segfm s", "ratio"]
    header += ["official peak MiB", "segfm peak MiB", "ratio"]
    table = markdown_table(header, rows)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    repeats = "--quick: 1 repeat, no warmup" if args.quick else f"repeats {REPEATS}"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch 1, one click")
    print(f"({repeats}; load average at the end: {load}; other jobs distort the times)\n")
    print(table)
    return table


if __name__ == "__main__":
    main()
