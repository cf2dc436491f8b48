"""Score a folder of saved predictions against ground truth without a model (``segfm evaluate``)."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

from tqdm import tqdm

from segfm.errors import DataError
from segfm.evaluation.scoring import Protocol, load_case, pair_cases, resolve_protocol, score_case
from segfm.evaluation.table import CaseTable
from segfm.utils.files import atomic_write_text

SEMANTIC_METRICS = ["dsc", "nsd"]
INSTANCE_METRICS = ["f1", "precision", "recall", "dsc_tp"]
INSTANCE_COUNTS = ["tp", "fp", "fn"]
#: interactive cases whose prediction npz has ``all_segs``
STEP_SUMMARY = ["dsc_auc", "nsd_auc", "dsc_final", "nsd_final"]


def _step_columns(steps: int) -> list[str]:
    if not steps:
        return []
    per_step = [f"{m}_{k}" for m in ("dsc", "nsd") for k in range(1, steps + 1)]
    return STEP_SUMMARY + per_step


def _case_columns(protocols: set[str], steps: int = 0) -> list[str]:
    columns = ["case", "protocol", "missing"]
    if protocols - {"instance"}:
        columns += ["classes", *SEMANTIC_METRICS, *_step_columns(steps)]
    if "instance" in protocols:
        columns += INSTANCE_METRICS + INSTANCE_COUNTS
    return columns


def _steps(names: Any) -> int:
    """The number of ``dsc_<k>`` step columns among ``names``."""
    return sum(1 for n in names if n.startswith("dsc_") and n[4:].isdigit())


def summary_text(report: dict[str, Any], output: Path | str) -> str:
    """The summary ``segfm evaluate`` prints: case counts, then mean ± std of each metric."""
    kinds = ", ".join(f"{k} {n}" for k, n in sorted(report["protocols"].items()))
    lines = [f"scored {report['cases']} cases ({kinds}) into {output}"]
    metrics = [m for m in SEMANTIC_METRICS + STEP_SUMMARY + INSTANCE_METRICS if m in report]
    for m in metrics:
        s = report[m]
        lines.append(f"  {m:<9} {s['mean']:.4f} ± {s['std']:.4f}  (n={s['n']})")
    steps = _steps(report)
    for m in ("dsc", "nsd") if steps else ():
        means = " ".join(f"{report[f'{m}_{k}']['mean']:.4f}" for k in range(1, steps + 1))
        lines.append(f"  {m} by step 1..{steps}: {means}  (n={report[f'{m}_1']['n']})")
    missing = report["missing_predictions"]
    if missing:
        lines.append(
            f"  missing predictions scored as empty: {missing} ({', '.join(report['missing'])})"
        )
    return "\n".join(lines)


def score_folders(
    pred: str,
    gt: str,
    output: str,
    tolerance: float = 2.0,
    protocol: Protocol = "auto",
    images: str | None = None,
    iou_threshold: float = 0.5,
) -> dict[str, Any]:
    """Score a folder of saved predictions against the ground truth, case by case.

    Files pair by name: ``<case>.npz`` with ``segs`` against ``<case>.npz`` with ``gts`` (CVPR
    2025 format), or ``<case>.nii.gz`` against ``<case>.nii.gz`` (spacing from the header; an
    affine differing by more than 1e-3 is warned about). A ground-truth case without prediction is
    scored as an empty prediction and counted; a prediction without ground truth is warned about.
    Writes ``cases.csv``, ``classes.csv`` and ``cases_summary.{md,json}`` into ``output``.
    Interactive predictions that hold ``all_segs`` (the intermediate predictions) are also scored
    per step as ``CVPR25_iter_eval.py`` does: ``dsc_<k>`` / ``nsd_<k>`` (the 0.2 DSC rule per
    step; 5 entries are a case without boxes, whose step 1 scores 0), ``dsc_auc`` / ``nsd_auc``
    (trapezoid over the last 5 steps at x = 0..4) and ``dsc_final`` / ``nsd_final``.
    Instance cases follow the official edge cases (no prediction: F1 0, no match: DSC_TP 0;
    :func:`segfm.evaluation.instances.instance_f1`).

    Args:
        pred: Folder of predictions.
        gt: Folder of ground truth.
        output: Folder to write the tables into (created if missing).
        tolerance: NSD tolerance in mm.
        protocol: ``interactive``: DSC and NSD of every ground-truth class, NSD 0 when the
            case-mean DSC is at most 0.2 (CVPR 2025 interactive track). ``semantic``: DSC and NSD
            of every prompted class present, no DSC rule (text track). ``instance``: F1 at
            ``iou_threshold`` and DSC of the matched instances (text track, instance cases).
            ``auto``: per case from its ``text_prompts`` (instance_label 1: instance; other
            prompts: semantic; none: interactive).
        images: Folder of the test image npz files, read for ``spacing`` and ``text_prompts``
            when the ground-truth npz lacks them.
        iou_threshold: Smallest IoU of a matched instance.

    Returns:
        The summary written to ``cases_summary.json``.
    """
    pairs, orphans = pair_cases(pred, gt, images)
    for path in orphans:
        warnings.warn(
            f"{path}: no ground truth of this name and file type in {gt}; not scored", stacklevel=2
        )
    rows: list[dict[str, Any]] = []
    classes = CaseTable(SEMANTIC_METRICS)
    for pair in tqdm(pairs, desc="scoring", unit="case", disable=None):
        case = load_case(pair)
        kind = resolve_protocol(protocol, case.prompts)
        scores, class_rows = score_case(case, kind, tolerance, iou_threshold, pair.gt)
        rows.append({"case": pair.name, "protocol": kind, "missing": pair.pred is None} | scores)
        for r in class_rows:
            classes.add(case=pair.name, **r)
    return _write(rows, classes, orphans, Path(output))


def _write(
    rows: list[dict[str, Any]], classes: CaseTable, orphans: list[Path], output: Path
) -> dict[str, Any]:
    protocols = {r["protocol"] for r in rows}
    steps = max((_steps(r) for r in rows), default=0)
    columns = _case_columns(protocols, steps)
    step_metrics = _step_columns(steps)
    metrics = [c for c in columns if c in SEMANTIC_METRICS + INSTANCE_METRICS + step_metrics]
    cases = CaseTable(metrics)
    for r in rows:
        cases.add(**{c: r.get(c, math.nan) for c in columns})
    missing = [r["case"] for r in rows if r["missing"]]
    report = {"cases": len(rows), **cases.summary()}
    report |= {
        "protocols": {p: sum(r["protocol"] == p for r in rows) for p in sorted(protocols)},
        "missing_predictions": len(missing),
        "missing": missing,
        "unpaired_predictions": [str(p) for p in orphans],
    }
    note = f"\nMissing predictions (scored as empty): {len(missing)}"
    note += f": {', '.join(missing)}\n" if missing else "\n"
    try:
        paths = cases.write(output, "cases")
        classes.write(output, "classes")
        atomic_write_text(paths["json"], json.dumps(report, indent=2) + "\n")
        atomic_write_text(paths["markdown"], cases.to_markdown() + note)
    except OSError as e:
        msg = f"cannot write into {output} ({e}); pass a writable --output folder"
        raise DataError(msg) from e
    return report
