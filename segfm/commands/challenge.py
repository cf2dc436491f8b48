"""``segfm challenge-predict`` and ``segfm challenge-eval``: a CVPR 2025 submission and its loop."""

from __future__ import annotations

import sys
import time
from typing import Literal

from segfm.errors import ConfigError


def challenge_predict(
    model: str = ".",
    inputs: str = "/workspace/inputs",
    outputs: str = "/workspace/outputs",
    device: str = "auto",
    keep_state: bool = True,
    track: Literal["auto", "interactive", "text"] = "auto",
) -> int:
    """Segment every case of a challenge inputs folder into the outputs folder (predict.sh).

    The entry point a ``segfm export --format challenge`` folder's ``predict.sh`` calls; each
    call is one interaction step (box, or box and clicks so far) or one text-track run. Errors
    of one case are reported on stderr and that case gets no output; the exit status is then 1.

    Args:
        model: The exported folder (``config.yaml``, ``model.ckpt``).
        inputs: Folder of the input npz cases.
        outputs: Folder the ``segs`` npz files go to (created if missing).
        device: ``auto`` (CUDA when present), ``cpu``, ``cuda``, ``cuda:1``, ...
        keep_state: Carry the method's per-case state (image embeddings, SAM-Med3D's previous
            logits) from one step's process to the next in ``<outputs>/.segfm_state``.
        track: The track of every case; ``auto``: interactive once a case has clicks, text
            when it has ``text_prompts``, else interactive (boxes).

    Returns:
        The number of cases that failed.
    """
    start = time.perf_counter()
    from segfm.challenge.bundle import load_method
    from segfm.challenge.entry import ChallengePredictor
    from segfm.methods.loading import tracks_of

    imported = time.perf_counter()
    method = load_method(model, device)
    loaded = time.perf_counter()
    predictor = ChallengePredictor(method, tracks_of(type(method)), keep_state, track)
    print(
        f"segfm challenge: start-up {loaded - start:.2f} s (imports {imported - start:.2f} s, "
        f"model {loaded - imported:.2f} s) on {predictor.device}",
        file=sys.stderr,
    )
    failed = predictor.run_folder(inputs, outputs)
    print(f"segfm challenge: done in {time.perf_counter() - start:.2f} s", file=sys.stderr)
    if failed:
        raise SystemExit(1)
    return failed


def challenge_eval(
    submission: str,
    images: str,
    output: str,
    gts: str | None = None,
    track: Literal["auto", "interactive", "text"] = "auto",
    clicks: int = 5,
    tolerance: float = 2.0,
    timeout: float | None = None,
    device: str | None = None,
) -> dict:
    """Run the challenge's official evaluation loop on a submission folder, without docker.

    Each case of ``images`` is copied into a private inputs folder and the submission's
    ``predict.sh`` runs once per step as a fresh process: the box step (skipped for a case
    without ``boxes``), then ``clicks`` steps, each adding at most one click per class at the
    centre of its largest error component (interactive track); or once (text track). Prints and
    writes the challenge's metrics: DSC_AUC, NSD_AUC, DSC_Final, NSD_Final and the running time
    of every step against the bound of 90 s per class; or DSC, NSD, F1 and DSC_TP.

    Args:
        submission: Folder with ``predict.sh`` (``segfm export --format challenge``).
        images: Folder of test npz cases (``imgs``, ``spacing``, ``boxes`` or ``text_prompts``).
        output: Folder of the tables, predictions (``segs``, ``all_segs``) and run logs.
        gts: Folder of the ground truth (``gts`` in npz files of the same names); None reads
            ``gts`` from the image files.
        track: ``interactive``, ``text``, or ``auto`` (text when a case has ``text_prompts``).
        clicks: Click steps after the box step (5 in the challenge).
        tolerance: NSD tolerance in mm.
        timeout: Seconds one ``predict.sh`` run may take (None: no limit).
        device: Device of the model in ``predict.sh`` (None: the submission's default).

    Returns:
        The mean of every metric per track.
    """
    if clicks < 1:
        msg = f"--clicks must be at least 1 (the challenge gives 5), got {clicks}"
        raise ConfigError(msg)
    from segfm.challenge.driver import DriverOptions, evaluate_submission

    options = DriverOptions(clicks=clicks, tolerance=tolerance, timeout=timeout, device=device)
    tables = evaluate_submission(submission, images, output, gts, track, options)
    summary = {}
    for kind, table in tables.items():
        if kind == "interactive":
            columns = ["case", "classes", "dsc_auc", "nsd_auc", "dsc_final", "nsd_final", "seconds"]
        else:
            columns = ["case", "dsc", "nsd", "f1", "dsc_tp", "seconds"]
        print(f"\n{kind} track ({output}/{kind}_metrics.csv):\n{table.to_markdown(columns)}")
        summary[kind] = table.summary()
    return summary
