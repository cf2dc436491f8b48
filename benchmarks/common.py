"""Benchmark helpers: isolated measurements in fresh processes, and a markdown table."""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def run_isolated(script: str | Path, args: Sequence[str], timeout: float = 1800) -> dict[str, Any]:
    """Run ``python script *args`` in a fresh interpreter and return the JSON it prints last.

    A fresh process per measurement keeps peak memory (``ru_maxrss``) and caches of one
    measurement out of the next.
    """
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env=env,
        check=False,
    )
    if proc.returncode != 0:
        msg = f"{script} {' '.join(args)} failed:\n{proc.stderr[-3000:]}"
        raise RuntimeError(msg)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_calls(fn: Callable[[], object], warmup: int, repeats: int) -> dict[str, Any]:
    """Wall and CPU time of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones; peak RSS."""
    for _ in range(warmup):
        fn()
    seconds, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        seconds.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return {
        "seconds": seconds,
        "median_s": statistics.median(seconds),
        "median_cpu_s": statistics.median(cpu),  # all threads; less sensitive to other jobs
        "peak_rss_mib": peak_rss_mib(),
    }


def ratio(new: float, old: float) -> str:
    """``new / old`` formatted for the table."""
    return f"{new / old:.2f}" if old else "n/a"


def compare_cells(theirs: dict[str, Any], ours: dict[str, Any]) -> list[str]:
    """Time and peak-memory cells of two :func:`time_calls` results, each side then the ratio."""
    return [
        f"{theirs['median_s']:.3f}",
        f"{ours['median_s']:.3f}",
        ratio(ours["median_s"], theirs["median_s"]),
        f"{theirs['peak_rss_mib']:.0f}",
        f"{ours['peak_rss_mib']:.0f}",
        ratio(ours["peak_rss_mib"], theirs["peak_rss_mib"]),
    ]


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
