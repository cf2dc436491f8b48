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


def test_empty_cases():
    empty = np.zeros((5, 5, 5), np.int64)
    one = empty.copy()
    one[1:3, 1:3, 1:3] = 4
    s = instance_f1(empty, empty)
    assert (s["precision"], s["recall"], s["f1"]) == (1.0, 1.0, 1.0)
    assert math.isnan(s["dsc_tp"])
    s = instance_f1(empty, one)  # everything missed
    assert (s["tp"], s["fn"], s["precision"], s["recall"], s["f1"]) == (0, 1, 0.0, 0.0, 0.0)
    s = instance_f1(one, empty)  # only false positives
    assert (s["tp"], s["fp"], s["precision"], s["recall"], s["f1"]) == (0, 1, 0.0, 0.0, 0.0)
    assert math.isnan(s["dsc_tp"])


def test_errors():
    with pytest.raises(ValueError, match="shape"):
        instance_f1(np.zeros((3, 3)), np.zeros((3, 4)))
    with pytest.raises(ValueError, match="iou_threshold"):
        instance_f1(np.zeros((3, 3)), np.zeros((3, 3)), iou_threshold=0.0)
