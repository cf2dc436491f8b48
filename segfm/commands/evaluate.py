"""``segfm evaluate``: score saved predictions against ground truth without a model."""

from __future__ import annotations

from typing import Any, Literal


def evaluate(
    pred: str,
    gt: str,
    output: str,
    tolerance: float = 2.0,
    protocol: Literal["auto", "interactive", "semantic", "instance"] = "auto",
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
    from segfm.evaluation.folder_scores import score_folders, summary_text

    report = score_folders(pred, gt, output, tolerance, protocol, images, iou_threshold)
    print(summary_text(report, output))
    return report
