"""Held-out scores of the same demo trained with different seeds, and their spread.

Usage: ``python benchmarks/seed_table.py RUN_FOLDER [RUN_FOLDER ...]`` (``make demo-seeds``
calls it). Each run folder holds ``config.yaml`` (its ``seed_everything``) and the
``protocol_<name>_cases_summary.json`` its ``segfm test`` wrote. Prints a markdown table: one
row per run, then the spread (largest minus smallest) of each score.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import yaml

SCORES = ("dsc_final", "nsd_final", "dsc", "nsd", "f1")


def row(folder: Path) -> dict[str, float | str]:
    """The seed and the mean scores of one run folder."""
    summaries = sorted(folder.glob("protocol_*_cases_summary.json"))
    if not summaries:
        msg = f"{folder} has no protocol_*_cases_summary.json: run segfm test into it first"
        raise SystemExit(msg)
    summary = json.loads(summaries[0].read_text())
    config = yaml.safe_load((folder / "config.yaml").read_text())
    out: dict[str, float | str] = {"run": folder.name, "seed": str(config.get("seed_everything"))}
    for name in SCORES:
        value = summary.get(name)
        if isinstance(value, dict) and value.get("n"):
            out[name] = float(value["mean"])
    return out


def table(folders: list[Path]) -> str:
    """The markdown table of the runs and the spread of each score."""
    rows = [row(f) for f in folders]
    names = [n for n in SCORES if any(n in r for r in rows)]
    lines = ["| run | seed | " + " | ".join(names) + " |", "|---" * (len(names) + 2) + "|"]
    for r in rows:
        values = [f"{r[n]:.4f}" if n in r else "" for n in names]
        lines.append(f"| {r['run']} | {r['seed']} | " + " | ".join(values) + " |")
    spread = []
    for n in names:
        values = [float(r[n]) for r in rows if n in r and math.isfinite(float(r[n]))]
        spread.append(f"{max(values) - min(values):.4f}" if values else "")
    lines.append("| **spread** (max - min) | | " + " | ".join(spread) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    print(table([Path(p) for p in sys.argv[1:]]))
