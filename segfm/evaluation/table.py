"""Per-case result tables: CSV, markdown and JSON summaries, written atomically."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from segfm.utils.files import atomic_write_text


class CaseTable:
    """Rows of per-case (and per-class) scores with their summary.

    Args:
        metrics: Names of the numeric columns to summarise (e.g. ``["dsc", "nsd"]``).
    """

    def __init__(self, metrics: list[str]) -> None:
        self.metrics = list(metrics)
        self.rows: list[dict[str, Any]] = []

    def add(self, **row: Any) -> None:
        """Append one row."""
        self.rows.append(row)

    def __len__(self) -> int:
        return len(self.rows)

    def summary(self) -> dict[str, dict[str, float]]:
        """Mean, standard deviation and count of every metric over all rows (NaN ignored)."""
        out: dict[str, dict[str, float]] = {}
        for m in self.metrics:
            values = [float(r[m]) for r in self.rows if m in r and not math.isnan(float(r[m]))]
            n = len(values)
            mean = sum(values) / n if n else math.nan
            var = sum((v - mean) ** 2 for v in values) / n if n else math.nan
            out[m] = {"mean": mean, "std": math.sqrt(var), "n": n}
        return out

    def to_csv(self) -> str:
        """The rows as CSV text, columns in first-seen order."""
        columns: list[str] = []
        for r in self.rows:
            columns += [k for k in r if k not in columns]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns)
        writer.writeheader()
        for r in self.rows:
            writer.writerow({k: _fmt(v) for k, v in r.items()})
        return buf.getvalue()

    def to_markdown(self, columns: list[str] | None = None) -> str:
        """The rows and the summary as a markdown table."""
        if not self.rows:
            return "(no cases)\n"
        columns = columns or list(self.rows[0])
        lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        for r in self.rows:
            lines.append("| " + " | ".join(_fmt(r.get(c, "")) for c in columns) + " |")
        summary = self.summary()
        cells = [
            f"**{summary[c]['mean']:.4f}**" if c in summary else ("**mean**" if i == 0 else "")
            for i, c in enumerate(columns)
        ]
        lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"

    def write(self, folder: str | Path, stem: str = "cases") -> dict[str, Path]:
        """Write ``<stem>.csv``, ``<stem>_summary.md`` and ``<stem>_summary.json`` into a folder.

        Returns:
            The paths written, by kind.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths = {
            "csv": folder / f"{stem}.csv",
            "markdown": folder / f"{stem}_summary.md",
            "json": folder / f"{stem}_summary.json",
        }
        atomic_write_text(paths["csv"], self.to_csv())
        atomic_write_text(paths["markdown"], self.to_markdown())
        atomic_write_text(
            paths["json"], json.dumps({"cases": len(self.rows), **self.summary()}, indent=2) + "\n"
        )
        return paths


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)
