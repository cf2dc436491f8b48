"""The CVPR 2025 interactive protocol, for any method that segments from boxes and clicks.

Per case: step 1 gives every class its box; steps 2..6 add at most one click per class, at the
centre of the largest error component of that class (:func:`segfm.prompts.center_error_click`),
and pass the previous prediction. Variants of the same loop: no click step (MedSAM's box test),
no box step (SAM-Med3D's N-click test: the first click is the centre of the target), and
SAM-Med3D's ``random`` click rule (:func:`segfm.prompts.sample_error_clicks`).

Clicks accumulate. After every step the prediction is scored
(DSC; NSD only when the case-mean DSC > 0.2), and the run is summarised by the area under the
DSC / NSD curve of the click steps and by their final values. A method takes part through one
function, :data:`Segmenter`; no protocol code lives inside the methods.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from segfm.evaluation.curves import summarise_steps
from segfm.evaluation.metrics import interactive_case_scores
from segfm.evaluation.options import ClickRule
from segfm.prompts import center_error_click, sample_error_clicks, volume_boxes

#: the challenge's limit on the running time per class and step, in seconds
TIME_LIMIT_PER_CLASS = 90.0

Point = tuple[int, ...]


@dataclass
class ClassPrompt:
    """The prompts of one class so far.

    Attributes:
        box: The CVPR box (``z_min``, ``z_max``, ``z_mid`` and the 2D box ``z_mid_x_min``,
            ``z_mid_y_min``, ``z_mid_x_max``, ``z_mid_y_max`` on slice ``z_mid``), or None.
        fg: Foreground clicks, voxel indices ``(z, y, x)``, oldest first.
        bg: Background clicks.
        order: ``"fg"`` / ``"bg"`` / None per click step (None: no error, no click).
    """

    box: dict[str, int] | None = None
    fg: list[Point] = field(default_factory=list)
    bg: list[Point] = field(default_factory=list)
    order: list[str | None] = field(default_factory=list)

    def clicks(self) -> list[tuple[Point, int]]:
        """All clicks as ``(point, 1 or 0)``, foreground first."""
        return [(p, 1) for p in self.fg] + [(p, 0) for p in self.bg]


#: ``segment(image [D, H, W], spacing, prompts by class id, previous label map or None)``
#: returns the label map ``[D, H, W]`` (int64) of the classes prompted.
Segmenter = Callable[[Tensor, Sequence[float], dict[int, ClassPrompt], Tensor | None], Tensor]


@dataclass
class InteractiveResult:
    """Everything one case produced under the protocol.

    Attributes:
        steps: Per step: ``step`` (1..), ``prompt`` (``box`` / ``click``), ``dsc``, ``nsd``,
            ``seconds``, ``skipped`` (step 1 without boxes), ``over_limit`` and ``classes``
            (per-class dsc / nsd).
        segs: The label map after every step the method ran: no entry for a skipped box step,
            as the challenge's ``all_segs`` (5 entries for a case without boxes).
        prompts: The final prompts per class (boxes and accumulated clicks).
        summary: ``dsc_auc``, ``nsd_auc``, ``dsc_final``, ``nsd_final``, ``seconds``,
            ``over_limit``.
    """

    steps: list[dict[str, Any]]
    segs: list[np.ndarray]
    prompts: dict[int, ClassPrompt]
    summary: dict[str, Any]
    shape: tuple[int, ...] = ()

    @property
    def final(self) -> np.ndarray:
        """The last prediction; all zeros when the method never ran (a skipped box step alone)."""
        return self.segs[-1] if self.segs else np.zeros(self.shape, dtype=np.int64)


def case_boxes(
    label: Tensor,
    meta: Mapping[str, Any] | None,
    from_mask: bool | None = None,
    box_only: bool = False,
) -> dict[int, dict[str, int]]:
    """The boxes of a case's interactive run: those of its data, completed from its mask or not.

    Args:
        label: Reference label map ``[D, H, W]``.
        meta: The case's metadata; ``meta["boxes"]`` (box per class id, or None) are the boxes
            of the data.
        from_mask: Give classes without a box the box of their mask
            (:func:`segfm.prompts.volume_boxes`, the challenge's ``get_boxes.py`` rule). None
            (auto): only when ``meta`` has no ``boxes`` key at all (a format that never carries
            boxes); a case in the challenge's npz form (the key present, None when the npz has
            no boxes) keeps its own boxes, so without boxes it skips the box step as in the
            challenge.
        box_only: The run has a box step and no click step (MedSAM's test): auto then derives
            the missing boxes, since without them the run would have nothing to do.

    Returns:
        Box per class id (empty: the box step is skipped).
    """
    meta = meta or {}
    boxes = dict(meta.get("boxes") or {})
    if from_mask is None:
        from_mask = box_only or "boxes" not in meta
    if from_mask:
        missing = [int(c) for c in label.unique() if c > 0 and int(c) not in boxes]
        boxes |= volume_boxes(label, missing) if missing else {}
    return boxes


def run_interactive(
    segment: Segmenter,
    image: Tensor,
    label: Tensor,
    spacing: Sequence[float],
    boxes: dict[int, dict[str, int]] | None,
    num_clicks: int = 5,
    tolerance: float = 2.0,
    seed: int = 42,
    time_limit: float = TIME_LIMIT_PER_CLASS,
    box: bool = True,
    click_rule: ClickRule = "center",
) -> InteractiveResult:
    """Run the interactive protocol on one case.

    Args:
        segment: The method (see :data:`Segmenter`).
        image: Intensities ``[D, H, W]``.
        label: Reference label map ``[D, H, W]``; its non-zero values are the classes.
        spacing: Voxel size in mm, ``(z, y, x)``.
        boxes: Box per class id; None or empty skips step 1 (DSC = NSD = 0 there and no
            method call, as the challenge scores cases without boxes). The first method call of
            a case gets ``previous`` None, where the challenge writes an all-zero ``prev_pred``.
        num_clicks: Click steps after the box step (5 in the challenge; 0: the box alone).
        tolerance: NSD tolerance in mm.
        seed: Seed of the click rule's tie-breaking.
        time_limit: Seconds allowed per class and step; slower steps are flagged.
        box: Start with the box step; False runs ``num_clicks`` click steps only.
        click_rule: ``center`` of the largest error component, or a ``random`` error voxel.

    Returns:
        Per-step scores, the predictions and the prompts.

    Raises:
        ValueError: If the label has no class or shapes disagree.
    """
    if image.shape != label.shape or image.ndim != 3:
        msg = (
            f"image and label must both be [D, H, W], got {list(image.shape)} / {list(label.shape)}"
        )
        raise ValueError(msg)
    gt = label.cpu().numpy()
    class_ids = [int(c) for c in np.unique(gt) if c != 0]
    if not class_ids:
        msg = "the reference has no class to prompt (all zeros)"
        raise ValueError(msg)
    given = (boxes or {}) if box else {}
    prompts = {c: ClassPrompt(box=given.get(c)) for c in class_ids}
    seg = torch.zeros_like(label, dtype=torch.long)
    steps: list[dict[str, Any]] = []
    segs: list[np.ndarray] = []
    has_boxes = any(p.box is not None for p in prompts.values())

    def score(step: int, kind: str, seconds: float, skipped: bool) -> None:
        pred = seg.cpu().numpy()
        scores = interactive_case_scores(pred, gt, spacing, class_ids, tolerance)
        if skipped:
            scores = {
                "dsc": 0.0,
                "nsd": 0.0,
                "classes": {c: {"dsc": 0.0, "nsd": 0.0} for c in class_ids},
            }
        steps.append(
            {
                "step": step,
                "prompt": kind,
                "dsc": scores["dsc"],
                "nsd": scores["nsd"],
                "seconds": seconds,
                "skipped": skipped,
                "over_limit": seconds > time_limit * len(class_ids),
                "classes": scores["classes"],
            }
        )
        if not skipped:  # the challenge's all_segs holds only the predictions made
            segs.append(pred.astype(np.int64))

    first = 1
    if box and has_boxes:
        start = time.perf_counter()
        box_prompts = {c: p for c, p in prompts.items() if p.box is not None}
        seg = segment(image, spacing, box_prompts, None).to(torch.long)
        score(1, "box", time.perf_counter() - start, skipped=False)
        first = 2
    elif box:
        score(1, "box", 0.0, skipped=True)
        first = 2
    generator = torch.Generator().manual_seed(seed)
    for step in range(first, first + num_clicks):
        pred = seg.cpu().numpy()
        for c, p in prompts.items():
            found = next_click(pred == c, gt == c, click_rule, seed, generator)
            if found is None:
                p.order.append(None)
                continue
            point, positive = found
            (p.fg if positive else p.bg).append(point)
            p.order.append("fg" if positive else "bg")
        start = time.perf_counter()
        previous = seg if (has_boxes or step > first) else None
        active = {c: p for c, p in prompts.items() if p.box is not None or p.fg or p.bg}
        seg = segment(image, spacing, active, previous).to(torch.long)
        score(step, "click", time.perf_counter() - start, skipped=False)
    dsc = summarise_steps([s["dsc"] for s in steps], auc_steps=num_clicks or None)
    nsd = summarise_steps([s["nsd"] for s in steps], auc_steps=num_clicks or None)
    summary = {
        # the AUC runs over the click steps: a box-only run (MedSAM's test) has none
        "dsc_auc": dsc["auc"] if num_clicks else math.nan,
        "nsd_auc": nsd["auc"] if num_clicks else math.nan,
        "dsc_final": dsc["final"],
        "nsd_final": nsd["final"],
        "seconds": float(sum(s["seconds"] for s in steps)),
        "over_limit": any(s["over_limit"] for s in steps),
    }
    return InteractiveResult(
        steps=steps, segs=segs, prompts=prompts, summary=summary, shape=tuple(gt.shape)
    )


def next_click(
    pred: np.ndarray,
    target: np.ndarray,
    rule: ClickRule = "center",
    seed: int = 42,
    generator: torch.Generator | None = None,
) -> tuple[Point, bool] | None:
    """The next click on a class: a voxel of its error and whether it is foreground.

    Args:
        pred: Predicted mask ``[*S]``.
        target: Reference mask ``[*S]``.
        rule: ``center`` of the largest error component (the CVPR 2025 rule), or a ``random``
            voxel of the error drawn uniformly (SAM-Med3D's training rule).
        seed: Seed of the ``center`` rule's tie-breaking.
        generator: Random generator of the ``random`` rule.

    Returns:
        ``(point, positive)``, or None when the prediction has no error.
    """
    if rule == "random":
        p, t = torch.as_tensor(pred, dtype=torch.bool), torch.as_tensor(target, dtype=torch.bool)
        if bool((p == t).all()):
            return None
        coords, labels = sample_error_clicks(p[None], t[None], generator=generator)
        return tuple(int(v) for v in coords[0]), bool(labels[0])
    found = center_error_click(pred, target, seed=seed)
    if found is None:
        return None
    return tuple(int(v) for v in found[0]), bool(found[1])
