"""Challenge entry point timings: start-up, seconds per step and per class, per method.

Each method is built at its released size with seeded random weights (no download), saved as
a checkpoint, exported with ``segfm export --format challenge`` and run by the official loop
(``segfm challenge-eval``: every step a fresh ``predict.sh`` process) on one generated CT case
(about 32 x 96 x 96 voxels, 5 classes; MedSAM encodes every slice at 1024 px and SAM-Med3D /
SegVol their full windows, so the per-slice and per-window costs are those of real scans, the
counts smaller). For interactive methods one more process then answers a click step (one
foreground click per class, the final prediction as ``prev_pred``) without the per-case state
(``--keep_state false``): it encodes the image again where the loop's click steps reuse the
state saved by the step before; ``ratio`` is the loop's click-step seconds / that step's.
``--tiny`` uses the tiny networks (a quick check).

    python benchmarks/bench_challenge.py [--methods medsam sam_med3d segvol biomedparse] [--tiny]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import mean

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from data_tools.challenge_cases import split_cases  # noqa: E402
from data_tools.synthetic_npz import make_dataset  # noqa: E402
from data_tools.tiny_clip import write_tiny_clip  # noqa: E402
from segfm.challenge.bundle import write_bundle  # noqa: E402
from segfm.challenge.driver import DriverOptions, evaluate_submission  # noqa: E402
from segfm.prompts import center_error_click  # noqa: E402

RELEASED = {
    "medsam": ("segfm.methods.MedSAM", {"arch": "vit_b"}, "interactive"),
    "sam_med3d": ("segfm.methods.SAMMed3D", {"arch": "sam_med3d"}, "interactive"),
    "segvol": ("segfm.methods.SegVol", {"arch": "base", "clip": True}, "interactive"),
    "biomedparse": ("segfm.methods.BiomedParse", {"arch": "v2", "clip": True}, "text"),
}
TINY = {
    "medsam": {"arch": "tiny", "image_size": 64},
    "sam_med3d": {"arch": "tiny", "image_size": 32},
    "segvol": {"arch": "tiny", "roi_size": [16, 32, 32], "clip": True},
    "biomedparse": {"arch": "tiny", "image_size": 64},
}
START = re.compile(r"start-up ([\d.]+) s \(imports ([\d.]+) s, model ([\d.]+) s\)")
SEGMENT = re.compile(r"segment ([\d.]+) s")


def _checkpoint(tmp: Path, class_path: str, args: dict, clip: Path) -> Path:
    from jsonargparse import ArgumentParser

    from segfm.methods.base import BaseTask

    args = dict(args)
    if args.pop("clip", False):
        args["clip_dir"] = str(clip)
    torch.manual_seed(0)
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(BaseTask, "model", required=True)
    cfg = parser.parse_object({"model": {"class_path": class_path, "init_args": args}})
    method = parser.instantiate(cfg).model
    path = tmp / f"{class_path.rsplit('.', 1)[-1]}.ckpt"
    hparams = dict(method.hparams) | {"_class_path": class_path}
    torch.save({"state_dict": method.state_dict(), "hyper_parameters": hparams}, path)
    return path


def _click_step_without_state(submission: Path, cases: Path, out: Path) -> float:
    """Seconds of one fresh ``predict.sh`` run on a click step, no state to reuse."""
    case = next((cases / "interactive").glob("*.npz"))
    with np.load(case, allow_pickle=True) as npz:
        arrays = {k: npz[k] for k in npz.files}
    with np.load(out / "predictions" / case.name) as npz:
        segs = npz["segs"]
    with np.load(cases / "gts" / case.name) as npz:
        gts = npz["gts"]
    ids = [int(c) for c in np.unique(gts) if c]
    clicks = [{"fg": [[int(v) for v in center_error_click(segs == c, gts == c)[0]]], "bg": []}
              for c in ids]  # fmt: skip
    work = out / "no_state"
    (work / "inputs").mkdir(parents=True, exist_ok=True)
    np.savez_compressed(work / "inputs" / case.name, **arrays, clicks=clicks,
                        clicks_order=[["fg"] for _ in ids], prev_pred=segs)  # fmt: skip
    env = dict(os.environ) | {
        "SEGFM_INPUTS": str(work / "inputs"),
        "SEGFM_OUTPUTS": str(work / "outputs"),
        "SEGFM_PYTHON": sys.executable,
        "SEGFM_KEEP_STATE": "false",
    }
    start = time.perf_counter()
    subprocess.run(["sh", "predict.sh"], cwd=submission, env=env, check=True,
                   capture_output=True)  # fmt: skip
    return time.perf_counter() - start


def _run(submission: Path, cases: Path, track: str, out: Path) -> dict[str, float]:
    with contextlib.redirect_stdout(sys.stderr):  # the loop's case lines stay out of the table
        tables = evaluate_submission(
            submission, cases / track, out, cases / "gts", track,
            DriverOptions(python=sys.executable),
        )  # fmt: skip
    row = tables[track].rows[0]
    if "classes" not in row:  # text rows: the prompted classes
        with np.load(next((cases / track).glob("*.npz")), allow_pickle=True) as npz:
            prompts = npz["text_prompts"].item()
        row = row | {"classes": sum(k != "instance_label" for k in prompts)}
    log = next((out / "work" / "logs").glob("*.log")).read_text()
    starts = [tuple(map(float, m)) for m in START.findall(log)]
    segments = [float(v) for v in SEGMENT.findall(log)]
    steps = sorted(int(k.split("_")[1]) for k in row if re.fullmatch(r"seconds_\d+", k))
    seconds = [row[f"seconds_{k}"] for k in steps] or [row["seconds"]]
    return {
        "classes": row.get("classes", 1),
        "startup": mean(s[0] for s in starts),
        "imports": mean(s[1] for s in starts),
        "model": mean(s[2] for s in starts),
        "first": seconds[0],
        "clicks": mean(seconds[1:]) if len(seconds) > 1 else float("nan"),
        "segment_first": segments[0],
        "segment_clicks": mean(segments[1:]) if len(segments) > 1 else float("nan"),
    }


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="*", default=list(RELEASED))
    parser.add_argument("--tiny", action="store_true", help="tiny networks (a quick check)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        root = make_dataset(tmp / "npz", num_cases=1, num_test=1, seed=0)
        cases = split_cases(root, tmp / "cases")
        for path in (cases / "interactive", cases / "text"):  # one CT case per track
            for f in path.glob("PET_*.npz"):
                f.unlink()
        clip = write_tiny_clip(tmp / "clip")
        size = "tiny" if args.tiny else "released size"
        print(f"one generated CT case, 5 classes, {torch.get_num_threads()} threads, {size}\n")
        print(
            "| method | start-up s (imports + model) | step 1 s | steps 2-6 s, mean | "
            "per class per step s | model s, step 1 / steps 2-6 | click step without state s | "
            "ratio |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for key in args.methods:
            class_path, init_args, track = RELEASED[key]
            init = TINY[key] if args.tiny else init_args
            ckpt = _checkpoint(tmp, class_path, init, clip)
            submission = write_bundle(ckpt, tmp / f"sub_{key}")
            w = _run(submission, cases, track, tmp / f"eval_{key}")
            per_class = (w["clicks"] if track == "interactive" else w["first"]) / w["classes"]
            if track == "interactive":
                without = _click_step_without_state(submission, cases, tmp / f"eval_{key}")
                plain = f"{without:.1f}"
                ratio = f"{w['clicks'] / without:.2f}"
                model = f"{w['segment_first']:.1f} / {w['segment_clicks']:.1f}"
                clicks = f"{w['clicks']:.1f}"
            else:
                plain, ratio, model, clicks = "-", "-", f"{w['segment_first']:.1f}", "-"
            print(
                f"| {key} | {w['startup']:.1f} ({w['imports']:.1f} + {w['model']:.1f}) | "
                f"{w['first']:.1f} | {clicks} | {per_class:.2f} | {model} | {plain} | {ratio} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
