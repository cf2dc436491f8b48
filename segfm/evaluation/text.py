"""The CVPR 2025 text-guided protocol, for any method that segments from text prompts.

Semantic datasets: the classes named in the case's text prompts are segmented from their prompts
(all of them when the data gives the prompts, as the challenge's container gets the file's
``text_prompts``; only those present in the reference when segfm names the classes itself) and
those present in the reference are scored with DSC and NSD (no DSC threshold). Instance
datasets: one prompt; a binary prediction is split into connected instances, matched to the
reference at IoU >= 0.5, and scored with F1 and the Dice of the matched pairs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from torch import Tensor

from segfm.evaluation.instances import instance_f1
from segfm.evaluation.metrics import semantic_case_scores
from segfm.sample import CaseMeta

#: ``segment(image [D, H, W], spacing, {class id: prompt}, meta)`` returns the label map
#: ``[D, H, W]``; ``meta`` is the case's :class:`~segfm.sample.CaseMeta` (instance flag, ...).
TextSegmenter = Callable[[Tensor, Sequence[float], dict[int, str], CaseMeta], Tensor]


def run_text(
    segment: TextSegmenter,
    image: Tensor,
    label: Tensor,
    spacing: Sequence[float],
    prompts: dict[int, str],
    instance: bool,
    tolerance: float = 2.0,
    meta: CaseMeta | None = None,
    prompt_absent: bool = False,
) -> dict[str, Any]:
    """Run the text-guided protocol on one case.

    Args:
        segment: The method (see :data:`TextSegmenter`).
        image: Intensities ``[D, H, W]``.
        label: Reference class (or instance) ids ``[D, H, W]``.
        spacing: Voxel size in mm.
        prompts: Text per class id (one entry for instance datasets).
        instance: Whether the label holds instances of one class.
        tolerance: NSD tolerance in mm.
        meta: The case's metadata, handed to ``segment`` (empty when None).
        prompt_absent: Also segment the prompted classes absent from the reference (the
            challenge gives the container every prompt of the file); they are not scored.

    Returns:
        ``seg`` (the prediction), ``dsc``, ``nsd`` (NaN for instance cases), ``f1``, ``dsc_tp``
        (NaN for semantic cases), ``classes`` (per-class scores) and ``seconds``.

    Raises:
        ValueError: If no prompted class is present, or an instance case has several prompts.
    """
    gt = label.cpu().numpy()
    if instance:
        if len(prompts) != 1:
            msg = f"an instance dataset has one class prompt, got {len(prompts)}"
            raise ValueError(msg)
        asked = dict(prompts)
    else:
        present = {int(c) for c in np.unique(gt) if c != 0}
        scored = {c: t for c, t in prompts.items() if c in present}
        asked = dict(prompts) if prompt_absent else scored
        if not scored:
            msg = f"none of the prompted classes {sorted(prompts)} is in the reference"
            raise ValueError(msg)
    start = time.perf_counter()
    seg = segment(image, spacing, asked, meta or {}).cpu().numpy().astype(np.int64)
    seconds = time.perf_counter() - start
    if instance:
        found = instance_f1(seg, gt)
        return {
            "seg": seg,
            "dsc": math.nan,
            "nsd": math.nan,
            "f1": found["f1"],
            "dsc_tp": found["dsc_tp"],
            "classes": {},
            "seconds": seconds,
        }
    scores = semantic_case_scores(seg, gt, spacing, sorted(scored), tolerance)
    return {
        "seg": seg,
        "dsc": scores["dsc"],
        "nsd": scores["nsd"],
        "f1": math.nan,
        "dsc_tp": math.nan,
        "classes": scores["classes"],
        "seconds": seconds,
    }
