"""``make bench``: run every benchmark script and collect their tables.

Each ``benchmarks/bench_*.py`` prints markdown (tables with a ``ratio`` column, segfm / official).
This runner prints them and writes them to ``benchmarks/results/<date>-<host>.md``.
"""

from __future__ import annotations

import datetime
import platform
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    """Run the benchmarks one after the other (never in parallel: they time the machine)."""
    scripts = sorted(HERE.glob("bench_*.py"))
    stamp = datetime.date.today().isoformat()
    host = platform.node() or "host"
    parts = [f"# segfm benchmarks, {stamp}, {host}\n", f"python {platform.python_version()}\n"]
    failed = 0
    for script in scripts:
        print(f"== {script.name}", flush=True)
        proc = subprocess.run(
            [sys.executable, str(script)], capture_output=True, text=True, check=False
        )
        out = proc.stdout.strip()
        print(out, flush=True)
        if proc.returncode:
            failed += 1
            out += f"\n\n(failed with exit code {proc.returncode})\n```\n{proc.stderr[-2000:]}\n```"
            print(proc.stderr[-2000:], file=sys.stderr)
        parts.append(f"## {script.stem}\n\n{out}\n")
    path = HERE / "results" / f"{stamp}-{host}.md"
    path.parent.mkdir(exist_ok=True)
    path.write_text("\n".join(parts))
    print(f"\nwrote {path.relative_to(HERE.parent)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
