"""The text protocol with scripted segmenters."""

from __future__ import annotations

import math

import pytest
import torch

from segfm.evaluation.text import run_text


def test_semantic_case_scores_only_prompted_classes_present() -> None:
    label = torch.zeros(8, 8, 8, dtype=torch.long)
    label[:4] = 1  # 256 voxels
    label[4:, :4] = 2  # 128 voxels
    seen = {}

    def segment(image, spacing, prompts, meta):
        seen.update(prompts)
        pred = torch.zeros_like(label)
        pred[:4] = 1  # class 1 perfect, class 2 missed
        return pred

    prompts = {1: "liver", 2: "spleen", 7: "absent organ"}
    out = run_text(segment, torch.zeros(8, 8, 8), label, (1.0,) * 3, prompts, instance=False)
    assert seen == {1: "liver", 2: "spleen"}
    assert out["classes"][1]["dsc"] == pytest.approx(1.0)
    assert out["classes"][2]["dsc"] == pytest.approx(0.0)
    assert out["dsc"] == pytest.approx(0.5) and math.isnan(out["f1"])


def test_instance_case_gives_f1() -> None:
    label = torch.zeros(1, 20, 20, dtype=torch.long)
    label[0, 1:4, 1:4] = 1
    label[0, 10:13, 10:13] = 2
    label[0, 15:18, 1:4] = 3

    def segment(image, spacing, prompts, meta):
        pred = torch.zeros_like(label)
        pred[0, 1:4, 1:4] = 1  # matches instance 1
        pred[0, 10:13, 10:13] = 1  # binary: split into a second instance, matches 2
        return pred

    out = run_text(segment, torch.zeros(1, 20, 20), label, (1.0,) * 3, {1: "cell"}, instance=True)
    # TP 2, FP 0, FN 1: F1 = 2 * 2 / (2 * 2 + 0 + 1)
    assert out["f1"] == pytest.approx(0.8) and out["dsc_tp"] == pytest.approx(1.0)
    assert math.isnan(out["dsc"])


def test_the_cases_metadata_reaches_the_segmenter() -> None:
    label = torch.ones(2, 2, 2, dtype=torch.long)
    seen = []

    def segment(image, spacing, prompts, meta):
        seen.append(meta)
        return label

    meta = {"case_id": "c1", "instance": True}
    run_text(segment, torch.zeros(2, 2, 2), label, (1.0,) * 3, {1: "x"}, True, meta=meta)  # type: ignore[arg-type]
    run_text(segment, torch.zeros(2, 2, 2), label, (1.0,) * 3, {1: "x"}, False)
    assert seen == [meta, {}]


def test_no_prompted_class_present() -> None:
    with pytest.raises(ValueError, match="none of the prompted"):
        run_text(
            lambda *a: None,
            torch.zeros(2, 2, 2),
            torch.zeros(2, 2, 2).long(),
            (1.0,) * 3,
            {3: "x"},
            instance=False,
        )


def test_data_prompts_are_all_segmented_but_only_present_classes_scored() -> None:
    # the challenge's container gets every prompt of the file, absent classes included
    label = torch.zeros(8, 8, 8, dtype=torch.long)
    label[:4] = 1
    seen = {}

    def segment(image, spacing, prompts, meta):
        seen.update(prompts)
        pred = torch.zeros_like(label)
        pred[:2] = 1
        pred[2:4] = 7  # the absent class takes half of class 1
        return pred

    prompts = {1: "liver", 7: "absent organ"}
    out = run_text(
        segment, torch.zeros(8, 8, 8), label, (1.0,) * 3, prompts, False, 2.0, None, True
    )
    assert seen == {1: "liver", 7: "absent organ"}
    assert list(out["classes"]) == [1]
    assert out["dsc"] == pytest.approx(2 * 128 / (256 + 128))
