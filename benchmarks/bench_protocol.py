"""Time of the CVPR 2025 interactive protocol per class, per method, on one CPU case.

    python benchmarks/bench_protocol.py            # 128 x 256 x 256 case, released sizes
    python benchmarks/bench_protocol.py --quick    # tiny networks (smoke test)

A synthetic case of 128 slices of 256 x 256 voxels holds three cuboid classes of different
sizes. Each method (released architecture, random weights: the time does not depend on them)
runs the whole protocol (a box step and five click steps) in a fresh process; the table gives
the seconds per class and step (the challenge allows 90) and for the whole case. There is no
official implementation of the protocol to compare with, so the ``ratio`` column compares each
method's slowest step with the 90 s limit. Each method runs in fp32 and again under
``torch.autocast("cpu", torch.bfloat16)`` (``--fp32-only`` skips that); the DSC of the box step
and of the last click step show what bf16 changes (random weights: the DSC only compares runs).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import markdown_table, peak_rss_mib, run_isolated

SHAPE = (128, 256, 256)
CLASSES = {1: ((20, 60), (40, 140), (30, 150)), 2: ((50, 110), (150, 230), (120, 200)),
           3: ((70, 90), (60, 90), (180, 220))}  # fmt: skip
METHODS = ("medsam", "sam_med3d")
LIMIT = 90.0


def case() -> tuple[torch.Tensor, torch.Tensor]:
    """Image (0-255 with noise) and label of the synthetic case."""
    gen = torch.Generator().manual_seed(0)
    label = torch.zeros(SHAPE, dtype=torch.long)
    image = torch.rand(SHAPE, generator=gen) * 40
    for c, ((z0, z1), (y0, y1), (x0, x1)) in CLASSES.items():
        label[z0:z1, y0:y1, x0:x1] = c
        image[z0:z1, y0:y1, x0:x1] += 60 * c
    return image, label


def worker(method: str, quick: bool, bf16: bool = False) -> None:
    """Run the protocol once with one method (under bf16 autocast) and print its JSON."""
    from segfm.evaluation.interactive import run_interactive
    from segfm.methods import MedSAM, SAMMed3D
    from segfm.prompts import volume_boxes

    torch.manual_seed(0)
    if method == "medsam":
        model = MedSAM(arch="tiny" if quick else "vit_b", export_official=False)
    else:
        model = SAMMed3D(
            arch="tiny" if quick else "sam_med3d", image_size=128, export_official=False
        )
    model.eval()
    image, label = case()
    boxes = volume_boxes(label, sorted(CLASSES))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        result = run_interactive(
            model.segment_interactive, image, label, (1.5, 1.0, 1.0), boxes, num_clicks=5
        )
    seconds = [s["seconds"] for s in result.steps]
    print(
        json.dumps(
            {
                "steps": seconds,
                "dsc": [s["dsc"] for s in result.steps],
                "peak_rss_mib": peak_rss_mib(),
            }
        )
    )


def main(argv: list[str] | None = None) -> None:
    """Measure every method and print the markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny networks (smoke test)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument(
        "--fp32-only", action="store_true", help="skip the rows under bf16 autocast"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--bf16", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, args.quick, args.bf16)
        return
    rows = []
    n = len(CLASSES)
    runs = [(m, False) for m in args.methods]
    runs += [] if args.fp32_only else [(m, True) for m in args.methods]
    for method, bf16 in runs:
        flags = [*(["--quick"] if args.quick else []), *(["--bf16"] if bf16 else [])]
        out = run_isolated(__file__, ["--worker", method, *flags])
        steps = out["steps"]
        per_class = [s / n for s in steps]
        rows.append(
            [
                method + (" (tiny)" if args.quick else "") + (", bf16 autocast" if bf16 else ""),
                f"{per_class[0]:.2f}",
                f"{sum(per_class[1:]) / len(per_class[1:]):.2f}",
                f"{max(per_class):.2f}",
                f"{sum(steps):.1f}",
                f"{max(per_class) / LIMIT:.3f}",
                f"{out['peak_rss_mib']:.0f}",
                f"{out['dsc'][0]:.4f} / {out['dsc'][-1]:.4f}",
            ]
        )
    header = ["method", "box step s/class", "click step s/class", "slowest s/class"]
    header += ["case total s", "ratio (slowest / 90 s)", "peak MiB", "DSC box / last click"]
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"case {SHAPE[0]}x{SHAPE[1]}x{SHAPE[2]}, {n} classes, 1 box step + 5 click steps; ")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; load average {load}\n")
    print(markdown_table(header, rows))


if __name__ == "__main__":
    main()
