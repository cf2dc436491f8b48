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


#: Debian's chromium, headless, with nothing that reaches for the network
CHROMIUM_ARGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def chromium(user_data_dir: str | Path, window: str = "1400,1000") -> Any:
    """Headless Debian chromium driven by selenium (``/usr/bin/chromium``, ``chromedriver``)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in (*CHROMIUM_ARGS, f"--window-size={window}", f"--user-data-dir={user_data_dir}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(
        service=Service(executable_path="/usr/bin/chromedriver"), options=options
    )


def wait_until_serving(url: str, process: subprocess.Popen, timeout: float = 300) -> float:
    """Seconds until ``segfm serve`` at ``url`` answers; raises if its process ends first."""
    import requests

    start = time.perf_counter()
    while True:
        try:
            requests.get(f"{url}/api/info", timeout=1)
            return time.perf_counter() - start
        except requests.ConnectionError:
            if process.poll() is not None:
                out = process.stdout.read().decode() if process.stdout else ""
                msg = f"segfm serve ended with status {process.returncode} before answering\n{out}"
                raise RuntimeError(msg) from None
            if time.perf_counter() - start > timeout:
                msg = f"segfm serve did not answer at {url} within {timeout:.0f} s"
                raise RuntimeError(msg) from None
            time.sleep(0.05)
