import math

import numpy as np
import pytest

from segfm.evaluation.instances import instance_f1, split_binary


def box(labels, value, start, size):
    labels[tuple(slice(s, s + n) for s, n in zip(start, size, strict=True))] = value


def three_gt_boxes():
    gt = np.zeros((24, 24, 24), np.int64)
    box(gt, 1, (1, 1, 1), (4, 4, 4))
    box(gt, 2, (1, 12, 1), (4, 4, 4))
    box(gt, 3, (12, 1, 1), (4, 4, 4))
    return gt


def test_counts_known_matches():
    gt = three_gt_boxes()
    pred = np.zeros_like(gt)
    box(pred, 10, (1, 1, 1), (4, 4, 4))  # = gt 1: IoU 1
    box(pred, 20, (1, 12, 2), (4, 4, 4))  # gt 2 shifted 1: overlap 48, union 80, IoU 0.6
    box(pred, 30, (12, 1, 4), (4, 4, 4))  # gt 3 shifted 3: overlap 16, union 112, IoU 1/7
    box(pred, 40, (18, 18, 18), (3, 3, 3))  # nothing there
    s = instance_f1(pred, gt)
    assert (s["tp"], s["fp"], s["fn"], s["n_gt"], s["n_pred"]) == (2, 2, 1, 3, 4)
    assert s["precision"] == pytest.approx(2 / 4)
    assert s["recall"] == pytest.approx(2 / 3)
    assert s["f1"] == pytest.approx(2 * (1 / 2) * (2 / 3) / (1 / 2 + 2 / 3))
    # Dice of the matched pairs: 1 and 2*48/(64+64)
    assert s["dsc_tp"] == pytest.approx((1.0 + 96 / 128) / 2)
    # a threshold below 1/7 also matches the shifted box (Dice 2*16/128)
    s = instance_f1(pred, gt, iou_threshold=0.1)
    assert (s["tp"], s["fp"], s["fn"]) == (3, 1, 0)
    assert s["dsc_tp"] == pytest.approx((1.0 + 96 / 128 + 32 / 128) / 3)


def test_binary_prediction_is_split_into_face_connected_components():
    gt = np.zeros((8, 8, 8), np.int64)
    box(gt, 1, (0, 0, 0), (3, 3, 3))
    box(gt, 2, (3, 3, 3), (3, 3, 3))  # touches box 1 at one corner only
    s = instance_f1((gt > 0).astype(np.uint8), gt)
    assert (s["tp"], s["fp"], s["fn"], s["n_pred"]) == (2, 0, 0, 2)
    assert s["f1"] == 1.0 and s["dsc_tp"] == 1.0
    # 2D: diagonal neighbours are separate (4-connectivity)
    square = np.zeros((6, 6), np.int64)
    square[0:2, 0:2], square[2:4, 2:4] = 5, 9
    parts = split_binary(square > 0)
    assert sorted(np.unique(parts).tolist()) == [0, 1, 2]
    assert instance_f1((square > 0) * 255, square)["tp"] == 2


def test_split_binary_leaves_instance_maps_alone():
    labels = np.zeros((4, 6), np.int64)
    labels[0, 0], labels[0, 2], labels[3, 5] = 3, 3, 7  # three values: not binary
    assert np.array_equal(split_binary(labels), labels)
    no_background = np.full((3, 3), 4)
    no_background[0, 0] = 6
    assert np.array_equal(split_binary(no_background), no_background)


def test_ids_above_255_are_not_wrapped():
    gt = np.zeros((4, 10, 10), np.int32)
    box(gt, 300, (0, 0, 0), (4, 3, 3))
    box(gt, 556, (0, 6, 6), (4, 3, 3))  # 300 and 556 are both 44 in uint8
    s = instance_f1(gt.copy(), gt)
    assert (s["n_gt"], s["n_pred"], s["tp"]) == (2, 2, 2)
    assert s["f1"] == 1.0


def test_matching_maximises_the_number_of_matches():
    # 2D, one column wide: gt 1 = rows 0-9 (100 px), gt 2 = rows 10-13 (40 px)
    gt = np.zeros((14, 10), np.int64)
    gt[0:10], gt[10:14] = 1, 2
    pred = np.zeros_like(gt)
    pred[0:3] = 1  # with gt 1: 30 / 100 = 0.3
    pred[3:14] = 2  # with gt 1: 70 / 140 = 0.5; with gt 2: 40 / 110 = 0.364
    s = instance_f1(pred, gt, iou_threshold=0.25)
    # pairing by the largest IoU first (pred 2 - gt 1) would leave one match; the optimum is two
    assert (s["tp"], s["fp"], s["fn"]) == (2, 0, 0)
    assert s["dsc_tp"] == pytest.approx((2 * 30 / 130 + 2 * 40 / 150) / 2)


def test_empty_cases_strict_rule():
    # segfm's earlier rule, kept as rules="strict"
    empty = np.zeros((5, 5, 5), np.int64)
    one = empty.copy()
    one[1:3, 1:3, 1:3] = 4
    s = instance_f1(empty, empty, rules="strict")
    assert (s["precision"], s["recall"], s["f1"]) == (1.0, 1.0, 1.0)
    assert math.isnan(s["dsc_tp"])
    s = instance_f1(empty, one, rules="strict")  # everything missed
    assert (s["tp"], s["fn"], s["precision"], s["recall"], s["f1"]) == (0, 1, 0.0, 0.0, 0.0)
    s = instance_f1(one, empty, rules="strict")  # only false positives
    assert (s["tp"], s["fp"], s["precision"], s["recall"], s["f1"]) == (0, 1, 0.0, 0.0, 0.0)
    assert math.isnan(s["dsc_tp"])


# --- the official eval_tp_fp_fn and F1 code (CVPR25_text_eval.py), the default -------------


def test_empty_prediction_counts_nothing_challenge_rule():
    # num_inst_seg == 0: tp = fp = fn = 0, so precision = recall = F1 = 0 and FN is 0 (not 2);
    # matched_pairs None: DSC_TP 0
    gt = three_gt_boxes()
    gt[gt == 3] = 0
    s = instance_f1(np.zeros_like(gt), gt)
    assert (s["tp"], s["fp"], s["fn"], s["n_gt"], s["n_pred"]) == (0, 0, 0, 2, 0)
    assert (s["precision"], s["recall"], s["f1"], s["dsc_tp"]) == (0.0, 0.0, 0.0, 0.0)


def test_nothing_on_either_side_scores_zero_challenge_rule():
    empty = np.zeros((5, 5, 5), np.int64)
    s = instance_f1(empty, empty)
    assert (s["tp"], s["fp"], s["fn"]) == (0, 0, 0)
    assert (s["precision"], s["recall"], s["f1"], s["dsc_tp"]) == (0.0, 0.0, 0.0, 0.0)


def test_no_matched_pair_gives_dsc_tp_zero_challenge_rule():
    # one predicted box overlapping gt 1 with IoU 1/7 < 0.5 (shifted by 3 of 4): no match;
    # tp 0, fp 1, fn 3 -> precision 0 / 1, recall 0 / 3, F1 0, DSC_TP 0 (strict: NaN)
    gt = three_gt_boxes()
    pred = np.zeros_like(gt)
    box(pred, 7, (1, 1, 4), (4, 4, 4))
    s = instance_f1(pred, gt)
    assert (s["tp"], s["fp"], s["fn"]) == (0, 1, 3)
    assert (s["precision"], s["recall"], s["f1"], s["dsc_tp"]) == (0.0, 0.0, 0.0, 0.0)
    assert math.isnan(instance_f1(pred, gt, rules="strict")["dsc_tp"])


def test_only_false_positives_challenge_rule():
    # empty reference, one predicted instance: tp 0, fp 1, fn 0 -> 0, 0, 0
    empty = np.zeros((5, 5, 5), np.int64)
    one = empty.copy()
    one[1:3, 1:3, 1:3] = 4
    s = instance_f1(one, empty)
    assert (s["tp"], s["fp"], s["fn"]) == (0, 1, 0)
    assert (s["precision"], s["recall"], s["f1"], s["dsc_tp"]) == (0.0, 0.0, 0.0, 0.0)


def test_two_valued_prediction_without_background_is_split_challenge_rule():
    # len(np.unique(seg)) == 2 with no 0: the official script labels the 6-connected components
    # of each value (cc3d keeps values apart). Value 1 on columns 0-1 and 4-5, value 2 on
    # columns 2-3: value 1 has two components and value 2 one, three instances, each equal to
    # a reference instance
    pred = np.ones((2, 4, 6), np.int64)
    pred[:, :, 2:4] = 2
    gt = np.zeros_like(pred)
    gt[:, :, 0:2], gt[:, :, 2:4], gt[:, :, 4:6] = 1, 2, 3
    s = instance_f1(pred, gt)
    assert (s["tp"], s["fp"], s["fn"], s["n_pred"]) == (3, 0, 0, 3)
    assert s["f1"] == 1.0 and s["dsc_tp"] == 1.0
    # strict: no 0 among the two values, not split: value 1 (32 voxels) has IoU 16 / 32 = 0.5
    # with gt 1 and with gt 3, one of them matches; value 2 = gt 2; one reference missed
    s = instance_f1(pred, gt, rules="strict")
    assert (s["tp"], s["fp"], s["fn"], s["n_pred"]) == (2, 0, 1, 2)


def test_split_binary_of_any_two_values():
    labels = np.full((3, 3), 4)
    labels[0, 0] = 6
    parts = split_binary(labels, background_required=False)
    assert sorted(np.unique(parts).tolist()) == [1, 2]  # no background left: 0 never appears
    assert np.array_equal(split_binary(labels), labels)


def test_errors():
    with pytest.raises(ValueError, match="shape"):
        instance_f1(np.zeros((3, 3)), np.zeros((3, 4)))
    with pytest.raises(ValueError, match="iou_threshold"):
        instance_f1(np.zeros((3, 3)), np.zeros((3, 3)), iou_threshold=0.0)
    with pytest.raises(ValueError, match="rules"):
        instance_f1(np.zeros((3, 3)), np.zeros((3, 3)), rules="lenient")
