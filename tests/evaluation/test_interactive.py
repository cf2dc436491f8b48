"""The interactive protocol with scripted segmenters whose scores are known by hand."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch

from segfm.evaluation.interactive import ClassPrompt, case_boxes, run_interactive

SHAPE = (12, 12, 12)


def _cube(lo: tuple[int, int, int], side: int, value: int = 1) -> torch.Tensor:
    out = torch.zeros(SHAPE, dtype=torch.long)
    out[lo[0] : lo[0] + side, lo[1] : lo[1] + side, lo[2] : lo[2] + side] = value
    return out


def _box(lo: tuple[int, int, int], side: int) -> dict[str, int]:
    z0, y0, x0 = lo
    return {
        "z_min": z0,
        "z_max": z0 + side - 1,
        "z_mid": z0 + side // 2,
        "z_mid_x_min": x0,
        "z_mid_y_min": y0,
        "z_mid_x_max": x0 + side - 1,
        "z_mid_y_max": y0 + side - 1,
    }


class Scripted:
    """Returns a fixed series of predictions and records what it was given."""

    def __init__(self, outputs: list[torch.Tensor]) -> None:
        self.outputs = list(outputs)
        self.calls: list[dict[str, Any]] = []

    def __call__(self, image, spacing, prompts: dict[int, ClassPrompt], previous) -> torch.Tensor:
        self.calls.append(
            {
                "prompts": {c: (p.box, list(p.fg), list(p.bg)) for c, p in prompts.items()},
                "previous": None if previous is None else previous.clone(),
            }
        )
        return self.outputs.pop(0)


def test_box_step_then_clicks_with_known_scores() -> None:
    label = _cube((2, 2, 2), 6)  # 216 voxels
    box = _box((2, 2, 2), 6)
    half = _cube((2, 2, 2), 6)
    half[5:] = 0  # z 2..4: 108 voxels, DSC 2*108/(108+216) = 2/3
    empty = torch.zeros(SHAPE, dtype=torch.long)
    outputs = [empty, half, half, label, label, label]
    method = Scripted(outputs)
    result = run_interactive(method, torch.zeros(SHAPE), label, (1.0, 1.0, 1.0), {1: box})
    dsc = [s["dsc"] for s in result.steps]
    assert dsc == pytest.approx([0.0, 2 / 3, 2 / 3, 1.0, 1.0, 1.0])
    assert [s["prompt"] for s in result.steps] == ["box"] + ["click"] * 5
    # step 1 sees the box alone and no previous prediction
    assert method.calls[0]["prompts"] == {1: (box, [], [])} and method.calls[0]["previous"] is None
    # after an empty prediction, the click is the centre of the missed cube (foreground)
    (_, fg, bg) = method.calls[1]["prompts"][1]
    assert bg == [] and fg[0] in {(z, y, x) for z in (4, 5) for y in (4, 5) for x in (4, 5)}
    # after the half cube the error is z 5..7: centre slice 6
    assert method.calls[2]["prompts"][1][1][-1][0] == 6
    # once perfect, no more clicks are added
    assert len(method.calls[5]["prompts"][1][1]) == 3 and result.prompts[1].order[-1] is None
    assert torch.equal(method.calls[2]["previous"], half)
    # AUC over the 5 click steps (x = 0..4): trapezoids by hand
    by_hand = (2 / 3 + 2 / 3) / 2 + (2 / 3 + 1) / 2 + (1 + 1) / 2 + (1 + 1) / 2
    assert result.summary["dsc_auc"] == pytest.approx(by_hand)
    assert result.summary["dsc_final"] == pytest.approx(1.0)
    assert result.summary["nsd_final"] == pytest.approx(1.0)
    assert len(result.segs) == 6 and np.array_equal(result.segs[1], half.numpy())


def test_without_boxes_step_one_is_skipped_and_scored_zero() -> None:
    label = _cube((3, 3, 3), 4)
    method = Scripted([label] * 5)
    result = run_interactive(method, torch.zeros(SHAPE), label, (1.0, 1.0, 1.0), None)
    first = result.steps[0]
    assert first["skipped"] and first["dsc"] == 0.0 and first["nsd"] == 0.0
    assert len(method.calls) == 5  # the box step never calls the method
    assert method.calls[0]["previous"] is None
    assert method.calls[0]["prompts"][1][0] is None and len(method.calls[0]["prompts"][1][1]) == 1


def test_box_alone_is_one_step() -> None:
    # MedSAM's own test: the box step and no click
    label = _cube((2, 2, 2), 6)
    half = _cube((2, 2, 2), 6)
    half[5:] = 0
    method = Scripted([half])
    box = _box((2, 2, 2), 6)
    result = run_interactive(
        method, torch.zeros(SHAPE), label, (1.0, 1.0, 1.0), {1: box}, num_clicks=0
    )
    assert [s["prompt"] for s in result.steps] == ["box"] and len(method.calls) == 1
    assert result.summary["dsc_final"] == pytest.approx(2 / 3)
    assert math.isnan(result.summary["dsc_auc"]) and len(result.segs) == 1  # no click steps


@pytest.mark.parametrize("rule", ["center", "random"])
def test_clicks_only_start_from_the_target(rule: str) -> None:
    # SAM-Med3D's own test: no box step, the first click a miss inside the target
    label = _cube((3, 3, 3), 4)
    method = Scripted([torch.zeros(SHAPE, dtype=torch.long), label, label])
    boxes = {1: _box((3, 3, 3), 4)}  # given, but not used without the box step
    result = run_interactive(
        method,
        torch.zeros(SHAPE),
        label,
        (1.0, 1.0, 1.0),
        boxes,
        num_clicks=3,
        box=False,
        click_rule=rule,
    )
    assert [s["prompt"] for s in result.steps] == ["click"] * 3
    assert [s["step"] for s in result.steps] == [1, 2, 3]
    assert not any(s["skipped"] for s in result.steps)
    first = method.calls[0]
    assert first["previous"] is None and first["prompts"][1][0] is None
    (point,) = first["prompts"][1][1]
    assert bool(label[point])
    assert torch.equal(method.calls[1]["previous"], torch.zeros(SHAPE, dtype=torch.long))
    assert len(method.calls[1]["prompts"][1][1]) == 2  # still a miss: a second fg click
    assert [s["dsc"] for s in result.steps] == pytest.approx([0.0, 1.0, 1.0])
    assert result.summary["dsc_auc"] == pytest.approx(0.5 + 1.0)


def test_nsd_is_zero_when_the_case_mean_dsc_is_low() -> None:
    label = _cube((0, 0, 0), 6)
    tiny = _cube((0, 0, 0), 2)  # 8 of 216 voxels: DSC = 16 / 224 < 0.2
    method = Scripted([tiny] * 6)
    result = run_interactive(
        method, torch.zeros(SHAPE), label, (1.0, 1.0, 1.0), {1: _box((0, 0, 0), 6)}
    )
    assert result.steps[0]["dsc"] == pytest.approx(16 / 224)
    assert all(s["nsd"] == 0.0 for s in result.steps)


def test_two_classes_get_one_click_each_per_step() -> None:
    label = _cube((0, 0, 0), 4) + _cube((6, 6, 6), 4, value=2)
    empty = torch.zeros(SHAPE, dtype=torch.long)
    method = Scripted([empty] * 3)
    boxes = {1: _box((0, 0, 0), 4), 2: _box((6, 6, 6), 4)}
    run_interactive(method, torch.zeros(SHAPE), label, (1.0,) * 3, boxes, num_clicks=2)
    prompts = method.calls[2]["prompts"]
    assert len(prompts[1][1]) == 2 and len(prompts[2][1]) == 2
    assert all(0 <= v < 4 for p in prompts[1][1] for v in p)
    assert all(6 <= v < 10 for p in prompts[2][1] for v in p)


def test_slow_steps_are_flagged() -> None:
    label = _cube((0, 0, 0), 4)
    result = run_interactive(
        Scripted([label] * 2),
        torch.zeros(SHAPE),
        label,
        (1.0,) * 3,
        {1: _box((0, 0, 0), 4)},
        num_clicks=1,
        time_limit=0.0,
    )
    assert result.summary["over_limit"] and all(s["over_limit"] for s in result.steps)


def test_an_empty_reference_is_refused() -> None:
    with pytest.raises(ValueError, match="no class"):
        run_interactive(
            Scripted([]), torch.zeros(SHAPE), torch.zeros(SHAPE).long(), (1.0,) * 3, None
        )


def test_without_boxes_all_segs_holds_the_five_predictions_made() -> None:
    # the official loop appends to all_segs only after a model call: no entry for step 1
    label = _cube((3, 3, 3), 4)
    half = _cube((3, 3, 3), 4)
    half[5:] = 0
    outputs = [half, half, label, label, label]
    result = run_interactive(Scripted(outputs), torch.zeros(SHAPE), label, (1.0, 1.0, 1.0), {})
    assert len(result.steps) == 6 and result.steps[0]["skipped"]
    assert len(result.segs) == 5
    for seg, out in zip(result.segs, outputs, strict=True):
        assert np.array_equal(seg, out.numpy())
    # scores: step 1 is 0; half the cube (32 of 64 voxels) is DSC 2 * 32 / 96 = 2/3
    assert [s["dsc"] for s in result.steps] == pytest.approx([0, 2 / 3, 2 / 3, 1, 1, 1])
    # AUC over the last five steps, x = 0..4
    auc = (2 / 3 + 2 / 3) / 2 + (2 / 3 + 1) / 2 + 1 + 1
    assert result.summary["dsc_auc"] == pytest.approx(auc)


@pytest.mark.parametrize(
    ("meta", "from_mask", "boxed"),
    [
        ({"boxes": None}, None, False),  # challenge npz without boxes: step 1 skipped
        ({}, None, True),  # a format that never carries boxes: boxes from the mask
        ({"boxes": None}, True, True),
        ({}, False, False),
    ],
)
def test_case_boxes_auto_true_false(meta: dict, from_mask: bool | None, boxed: bool) -> None:
    label = _cube((3, 3, 3), 4)
    boxes = case_boxes(label, meta, from_mask)
    assert (1 in boxes) is boxed
    if boxed:  # the tight z range of the cube (the 2D box may carry the random margin)
        assert (boxes[1]["z_min"], boxes[1]["z_max"]) == (3, 6)


def test_case_boxes_keeps_the_data_boxes() -> None:
    label = _cube((3, 3, 3), 4)
    given = _box((2, 2, 2), 6)
    assert case_boxes(label, {"boxes": {1: given}}, None) == {1: given}
    assert case_boxes(label, {"boxes": {1: given}}, True) == {1: given}
