import pytest

from segfm.evaluation.curves import auc, summarise_steps


def test_auc_hand_computed_trapezoid():
    # (0.2+0.5)/2 + (0.5+0.7)/2 + (0.7+0.8)/2 + (0.8+0.8)/2 = 0.35 + 0.6 + 0.75 + 0.8
    assert auc([0.2, 0.5, 0.7, 0.8, 0.8]) == pytest.approx(2.5)
    assert auc([1.0] * 5) == 4.0  # the CVPR maximum over five steps
    assert auc([0.0, 1.0]) == 0.5
    assert auc([0.7]) == 0.0


def test_auc_empty_raises():
    with pytest.raises(ValueError, match="at least one"):
        auc([])


def test_summarise_steps_uses_the_last_five_of_six():
    steps = [0.9, 0.2, 0.5, 0.7, 0.8, 0.8]  # step 1 (boxes) is left out of the AUC
    assert summarise_steps(steps) == {"final": 0.8, "auc": pytest.approx(2.5)}
    # all six: 2.5 + (0.9 + 0.2) / 2
    assert summarise_steps(steps, auc_steps=None)["auc"] == pytest.approx(3.05)
    assert summarise_steps([0.4]) == {"final": 0.4, "auc": 0.0}
    with pytest.raises(ValueError, match="auc_steps"):
        summarise_steps(steps, auc_steps=0)
    with pytest.raises(ValueError, match="at least one"):
        summarise_steps([])
