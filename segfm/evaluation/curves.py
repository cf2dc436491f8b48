"""Scores over interaction steps: area under the curve and final value.

The CVPR 2025 interactive track reports ``DSC_AUC``/``NSD_AUC``, the trapezoid area under the
scores of the last five steps at x = 0, 1, ..., 4 (at most 4.0), and ``DSC_Final``/``NSD_Final``,
the score of the last step.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

#: the interactive track integrates the scores of its last five steps (the five click steps)
AUC_STEPS = 5


def auc(values: Sequence[float]) -> float:
    """Trapezoid area under a series of scores at x = 0, 1, ..., n - 1.

    Args:
        values: One score per step.

    Returns:
        ``sum((v[i] + v[i + 1]) / 2)``; 0.0 for a single value.

    Raises:
        ValueError: If ``values`` is empty.
    """
    values = [float(v) for v in values]
    if not values:
        msg = "auc needs at least one value"
        raise ValueError(msg)
    return float(sum((a + b) / 2.0 for a, b in pairwise(values)))


def summarise_steps(values: Sequence[float], auc_steps: int | None = AUC_STEPS) -> dict[str, float]:
    """Final value and AUC of a per-step series.

    Args:
        values: One score per step, first to last.
        auc_steps: Integrate only the last this many steps (5 in the interactive track, where
            the first of 6 steps is the box); None integrates all.

    Returns:
        ``{"final": last value, "auc": area under the last auc_steps values}``.

    Raises:
        ValueError: If ``values`` is empty or ``auc_steps`` is below 1.
    """
    values = [float(v) for v in values]
    if auc_steps is not None and auc_steps < 1:
        msg = f"auc_steps must be at least 1, got {auc_steps}"
        raise ValueError(msg)
    tail = values if auc_steps is None else values[-auc_steps:]
    area = auc(tail)  # raises on an empty series
    return {"final": values[-1], "auc": area}
