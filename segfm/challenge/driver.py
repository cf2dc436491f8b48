"""The official evaluation loops of the CVPR 2025 challenge, run locally against ``predict.sh``.

``segfm challenge-eval`` does what the organisers' scripts (``CVPR25_iter_eval.py``,
``CVPR25_text_eval.py``) do with a container, without docker: each case is copied into an
inputs folder, ``sh predict.sh`` runs as a fresh process with ``SEGFM_INPUTS`` /
``SEGFM_OUTPUTS`` pointing at the folders, and the output is scored.

Interactive track, per case: step 1 with the ``boxes`` (a case without them skips it: DSC 0,
NSD 0, no run, nothing in ``all_segs``); then ``clicks`` steps, each adding at most one click
per class at the centre of its largest error component
(:func:`segfm.prompts.center_error_click`; no error: no click, ``None`` in ``clicks_order``),
written into the input with ``clicks``, ``clicks_order`` and ``prev_pred`` as the official loop
writes them. A step that writes no output leaves the previous output in place, as in the
official loop (the first step's missing output counts as all zeros). After every step DSC and NSD
(NSD only when the case-mean DSC > 0.2); per case DSC_AUC / NSD_AUC over the click steps,
DSC_Final / NSD_Final, the running time of every step (process start-up included) and the
challenge's bound of 90 s per class. Text track: one run per case, semantic DSC / NSD over the
prompted classes present, instance F1 and DSC_TP.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from segfm.errors import ConfigError, DataError
from segfm.evaluation.curves import summarise_steps
from segfm.evaluation.instances import instance_f1
from segfm.evaluation.interactive import TIME_LIMIT_PER_CLASS
from segfm.evaluation.metrics import interactive_case_scores, semantic_case_scores
from segfm.evaluation.table import CaseTable
from segfm.prompts import center_error_click


@dataclass
class DriverOptions:
    """How the local loop runs.

    Attributes:
        clicks: Click steps after the box step (5 in the challenge).
        tolerance: NSD tolerance in mm.
        seed: Seed of the click rule's tie-break (42 in the official script).
        timeout: Seconds one ``predict.sh`` run may take before it is stopped (None: no limit).
        python: Interpreter ``predict.sh`` runs segfm with (``SEGFM_PYTHON``).
        device: Device of the model (``SEGFM_DEVICE``; None keeps the bundle's default).
    """

    clicks: int = 5
    tolerance: float = 2.0
    seed: int = 42
    timeout: float | None = None
    python: str = sys.executable
    device: str | None = None


def _load(path: Path) -> dict[str, Any]:
    with np.load(path, allow_pickle=True) as npz:
        return dict(npz)


class Submission:
    """A folder with ``predict.sh`` run on private inputs / outputs folders."""

    def __init__(self, folder: str | Path, work: Path, options: DriverOptions) -> None:
        self.folder = Path(folder).resolve()
        if not (self.folder / "predict.sh").is_file():
            msg = (
                f"{self.folder} has no predict.sh; pass the folder that "
                "segfm export --format challenge wrote"
            )
            raise ConfigError(msg)
        self.inputs, self.outputs = work / "inputs", work / "outputs"
        for folder in (self.inputs, self.outputs):
            if folder.exists():
                shutil.rmtree(folder)
            folder.mkdir(parents=True)
        self.logs = work / "logs"
        if self.logs.exists():
            shutil.rmtree(self.logs)
        self.logs.mkdir(parents=True)
        self.options = options

    def run(self, case: str) -> float:
        """``sh predict.sh`` once; its output goes to ``logs/<case>.log``. Returns seconds."""
        env = dict(os.environ)
        env |= {
            "SEGFM_INPUTS": str(self.inputs.resolve()),
            "SEGFM_OUTPUTS": str(self.outputs.resolve()),
            "SEGFM_PYTHON": self.options.python,
        }
        if self.options.device:
            env["SEGFM_DEVICE"] = self.options.device
        log = self.logs / f"{Path(case).stem}.log"
        start = time.perf_counter()
        with open(log, "a") as f:
            try:
                subprocess.run(
                    ["sh", "predict.sh"],
                    cwd=self.folder,
                    env=env,
                    stdout=f,
                    stderr=subprocess.STDOUT,
                    timeout=self.options.timeout,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                f.write(f"\nsegfm challenge-eval: stopped after {self.options.timeout} s\n")
        return time.perf_counter() - start


def _gts(case: Path, gts: Path | None) -> np.ndarray:
    source = (gts / case.name) if gts is not None else case
    if not source.is_file():
        msg = f"no ground truth for {case.name}: {source} does not exist; pass --gts"
        raise DataError(msg)
    with np.load(source, allow_pickle=False) as npz:
        if "gts" not in npz.files:
            msg = f"{source} has no 'gts'; pass --gts with the ground-truth folder"
            raise DataError(msg)
        return np.asarray(npz["gts"])


def _output(sub: Submission, name: str, like: np.ndarray) -> np.ndarray | None:
    path = sub.outputs / name
    if not path.is_file():
        return None
    try:
        segs = np.asarray(_load(path)["segs"])
    except Exception:  # an unreadable output counts as none, as in the official loop
        return None
    return segs.reshape(like.shape) if segs.size == like.size else None


def interactive_case(
    case: Path, gts: np.ndarray, sub: Submission, predictions: Path
) -> dict[str, Any]:
    """Run the official interactive loop on one case; returns its metrics row."""
    options = sub.options
    image = _load(case)
    spacing = [float(v) for v in np.asarray(image["spacing"]).ravel()]
    class_ids = [int(c) for c in np.unique(gts) if c != 0]
    clicks: list[dict[str, list[list[int]]]] = [{"fg": [], "bg": []} for _ in class_ids]
    order: list[list[str | None]] = [[] for _ in class_ids]
    has_boxes = "boxes" in image
    shutil.copy(case, sub.inputs / case.name)
    row: dict[str, Any] = {"case": case.name}
    dscs, nsds, all_segs, total = [], [], [], 0.0
    segs = np.zeros(gts.shape, dtype=np.uint8)
    for it in range(options.clicks + 1):
        step = it + 1
        if it == 0 and not has_boxes:
            row |= {f"seconds_{step}": 0.0, f"dsc_{step}": 0.0, f"nsd_{step}": 0.0}
            dscs.append(0.0)
            nsds.append(0.0)
            continue
        if it > 0:
            found = _output(sub, case.name, gts)
            segs = (found if found is not None else np.zeros(gts.shape)).astype(np.uint8)
            for k, c in enumerate(class_ids):
                click = center_error_click(segs == c, gts == c, seed=options.seed)
                if click is None:
                    order[k].append(None)
                    continue
                point, positive = click
                kind = "fg" if positive else "bg"
                clicks[k][kind].append([int(v) for v in point])
                order[k].append(kind)
            arrays = {k: image[k] for k in ("imgs", "gts", "spacing") if k in image}
            arrays |= {"clicks": clicks, "clicks_order": order, "prev_pred": segs}
            if has_boxes:
                arrays["boxes"] = image["boxes"]
            np.savez_compressed(sub.inputs / case.name, **arrays)
        seconds = sub.run(case.name)
        total += seconds
        found = _output(sub, case.name, gts)
        if found is None:
            print(f"[WARNING] {case.name}: no prediction at step {step}; scored as zeros")
        segs = found if found is not None else np.zeros(gts.shape, dtype=np.uint8)
        all_segs.append(np.asarray(segs).astype(np.uint8))
        scores = interactive_case_scores(segs, gts, spacing, class_ids, options.tolerance)
        dscs.append(scores["dsc"])
        nsds.append(scores["nsd"])
        row |= {
            f"seconds_{step}": seconds,
            f"dsc_{step}": scores["dsc"],
            f"nsd_{step}": scores["nsd"],
        }
    (sub.inputs / case.name).unlink(missing_ok=True)
    predictions.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(predictions / case.name, segs=all_segs[-1], all_segs=np.stack(all_segs))
    dsc = summarise_steps(dscs, auc_steps=options.clicks or None)
    nsd = summarise_steps(nsds, auc_steps=options.clicks or None)
    limit = TIME_LIMIT_PER_CLASS * len(class_ids)
    row |= {
        "classes": len(class_ids),
        "dsc_auc": dsc["auc"],
        "nsd_auc": nsd["auc"],
        "dsc_final": dsc["final"],
        "nsd_final": nsd["final"],
        "seconds": total,
        "runtime_upperbound": limit,
        "over_limit": total > limit,
    }
    return row


def text_case(
    case: Path, gts: np.ndarray, sub: Submission, predictions: Path, tolerance: float
) -> dict[str, Any]:
    """Run the official text loop on one case; returns its metrics row."""
    image = _load(case)
    prompts = image["text_prompts"]
    prompts = prompts.item() if isinstance(prompts, np.ndarray) else prompts
    instance = int(prompts.get("instance_label", 0)) == 1
    ids = sorted(int(k) for k in prompts if k != "instance_label")
    shutil.copy(case, sub.inputs / case.name)
    seconds = sub.run(case.name)
    found = _output(sub, case.name, gts)
    (sub.inputs / case.name).unlink(missing_ok=True)
    row: dict[str, Any] = {"case": case.name, "instance": instance, "seconds": seconds}
    row |= {"dsc": math.nan, "nsd": math.nan, "f1": math.nan, "dsc_tp": math.nan}
    if found is None:
        print(f"[WARNING] {case.name}: no prediction; the official script records NaN")
        row["missing"] = True
        return row
    row["missing"] = False
    predictions.mkdir(parents=True, exist_ok=True)
    shutil.move(sub.outputs / case.name, predictions / case.name)
    if instance:
        scores = instance_f1(found, gts)
        row |= {"f1": scores["f1"], "dsc_tp": scores["dsc_tp"]}
    else:
        present = [c for c in ids if bool((gts == c).any())]
        spacing = [float(v) for v in np.asarray(image["spacing"]).ravel()]
        scores = semantic_case_scores(found, gts, spacing, present, tolerance)
        row |= {"dsc": scores["dsc"], "nsd": scores["nsd"]}
    return row


def _track(case: Path, track: str) -> str:
    if track != "auto":
        return track
    with np.load(case, allow_pickle=False) as npz:
        return "text" if "text_prompts" in npz.files else "interactive"


def evaluate_submission(
    submission: str | Path,
    images: str | Path,
    output: str | Path,
    gts: str | Path | None = None,
    track: str = "auto",
    options: DriverOptions | None = None,
) -> dict[str, CaseTable]:
    """Run the official loops over every case of ``images`` and write the tables.

    Writes into ``output``: ``interactive_metrics.csv`` / ``text_metrics.csv`` (one row per
    case) with their ``_summary.md`` / ``_summary.json``, ``predictions/<case>.npz`` (``segs``,
    and ``all_segs`` for the interactive track) and ``work/logs/<case>.log`` (what
    ``predict.sh`` printed).

    Returns:
        The tables by track.
    """
    options = options or DriverOptions()
    images, output = Path(images), Path(output)
    cases = sorted(images.glob("*.npz"))
    if not cases:
        msg = f"no .npz case in {images}; pass --images with the test cases"
        raise DataError(msg)
    gts_folder = Path(gts) if gts is not None else None
    sub = Submission(submission, output / "work", options)
    steps = range(1, options.clicks + 2)
    tables = {
        "interactive": CaseTable(
            ["dsc_auc", "nsd_auc", "dsc_final", "nsd_final", "seconds"]
            + [f"dsc_{k}" for k in steps]
            + [f"nsd_{k}" for k in steps]
            + [f"seconds_{k}" for k in steps]
        ),
        "text": CaseTable(["dsc", "nsd", "f1", "dsc_tp", "seconds"]),
    }
    for case in cases:
        kind = _track(case, track)
        truth = _gts(case, gts_folder)
        if kind == "interactive":
            row = interactive_case(case, truth, sub, output / "predictions")
        else:
            row = text_case(case, truth, sub, output / "predictions", options.tolerance)
        tables[kind].add(**row)
        print(_case_line(kind, row), flush=True)
    for kind, table in tables.items():
        if len(table):
            table.write(output, f"{kind}_metrics")
    return {k: t for k, t in tables.items() if len(t)}


def _case_line(kind: str, row: dict[str, Any]) -> str:
    if kind == "interactive":
        line = (
            f"{row['case']}: DSC_AUC {row['dsc_auc']:.4f} NSD_AUC {row['nsd_auc']:.4f} "
            f"DSC_Final {row['dsc_final']:.4f} NSD_Final {row['nsd_final']:.4f} "
            f"{row['seconds']:.1f} s"
        )
        if row["over_limit"]:
            line += f" [over the {row['runtime_upperbound']:.0f} s bound]"
        return line
    return (
        f"{row['case']}: DSC {row['dsc']:.4f} NSD {row['nsd']:.4f} F1 {row['f1']:.4f} "
        f"DSC_TP {row['dsc_tp']:.4f} {row['seconds']:.1f} s"
    )
