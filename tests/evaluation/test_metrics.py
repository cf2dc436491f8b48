import math

import numpy as np
import pytest
import torch

from segfm.evaluation.metrics import (
    dice,
    hd95,
    interactive_case_scores,
    semantic_case_scores,
    surface_dice,
)


def cube(shape, start, size):
    m = np.zeros(shape, bool)
    m[tuple(slice(s, s + size) for s in start)] = True
    return m


def sphere(shape, centre_mm, radius_mm, spacing):
    grids = np.meshgrid(
        *[np.arange(n) * s for n, s in zip(shape, spacing, strict=True)], indexing="ij"
    )
    dist2 = sum((g - c) ** 2 for g, c in zip(grids, centre_mm, strict=True))
    return dist2 <= radius_mm**2


def test_dice_offset_cubes():
    a = cube((20, 20, 20), (2, 2, 2), 10)
    b = cube((20, 20, 20), (2, 2, 4), 10)  # shifted by 2 along x: overlap 10*10*8
    assert dice(a, b) == pytest.approx(2 * 800 / 2000)
    assert dice(a, a) == 1.0
    assert dice(a, np.zeros_like(a)) == 0.0
    assert dice(np.zeros_like(a), np.zeros_like(a)) == 1.0


def test_dice_shape_mismatch():
    with pytest.raises(ValueError, match="shape"):
        dice(np.zeros((3, 3)), np.zeros((3, 4)))


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (2.5, 0.8, 0.8)])
def test_surface_dice_concentric_spheres(spacing):
    shape = tuple(int(60 / s) for s in spacing)
    centre = (30.0, 30.0, 30.0)
    inner = sphere(shape, centre, 12.0, spacing)
    outer = sphere(shape, centre, 18.0, spacing)  # surfaces 6 mm apart everywhere
    assert surface_dice(inner, outer, spacing, tolerance=3.0) < 0.05
    assert surface_dice(inner, outer, spacing, tolerance=9.0) > 0.99
    assert surface_dice(inner, inner, spacing, tolerance=0.5) == pytest.approx(1.0)


def test_surface_dice_2d_offset_squares_in_mm():
    a = cube((40, 40), (10, 10), 20)
    b = cube((40, 40), (10, 13), 20)  # 3 pixels apart along x
    # 3 px at 1 mm is outside a 2 mm tolerance for the shifted sides, at 0.5 mm it is inside
    assert surface_dice(a, b, (1.0, 1.0), 2.0) < 1.0
    assert surface_dice(a, b, (0.5, 0.5), 2.0) == pytest.approx(1.0)


def test_surface_dice_empty_rules():
    a = cube((10, 10, 10), (2, 2, 2), 4)
    empty = np.zeros_like(a)
    assert surface_dice(empty, empty, (1, 1, 1)) == 1.0
    assert surface_dice(a, empty, (1, 1, 1)) == 0.0
    with pytest.raises(ValueError, match="spacing"):
        surface_dice(a, a, (1, 1))


def test_nsd_zero_at_the_dice_threshold():
    gt = np.zeros((16, 16, 16), np.int64)
    gt[2:10, 2:10, 2:10] = 1
    gt[11:15, 11:15, 11:15] = 2
    pred = np.zeros_like(gt)
    pred[2:10, 2:10, 2:10] = 1
    pred[11:15, 11:13, 14:16] = 2  # overlap 4*2*1 = 8 of 64 + 16 voxels: DSC exactly 0.2
    both = interactive_case_scores(pred, gt, (1.0, 1.0, 1.0), [1, 2])
    assert both["classes"][1] == {"dsc": 1.0, "nsd": 1.0}
    assert both["classes"][2]["nsd"] > 0.0  # case mean 0.6: NSD computed for every class
    scores = interactive_case_scores(pred, gt, (1.0, 1.0, 1.0), [2])
    assert scores["classes"][2]["dsc"] == pytest.approx(2 * 8 / 80)
    assert scores["classes"][2]["nsd"] == 0.0 and scores["nsd"] == 0.0


def test_nsd_computed_above_the_dice_threshold():
    gt = np.zeros((16, 16, 16), np.int64)
    gt[2:10, 2:10, 2:10] = 3
    pred = np.zeros_like(gt)
    pred[2:10, 2:10, 3:11] = 3
    scores = interactive_case_scores(pred, gt, (1.0, 1.0, 1.0), [3], tolerance=2.0)
    assert scores["classes"][3]["dsc"] == pytest.approx(2 * 448 / 1024)
    assert scores["classes"][3]["nsd"] == pytest.approx(1.0)


# --- HD95, the offset-cube DSC count, and the CVPR 2025 case-level rules ---


def voxel(shape, index):
    m = np.zeros(shape, bool)
    m[index] = True
    return m


@pytest.mark.parametrize(("a", "k", "axis"), [(6, 1, 0), (8, 3, 1), (5, 4, 2)])
def test_dice_offset_cubes_counted_by_hand(a, k, axis):
    start = [2, 2, 2]
    shifted = list(start)
    shifted[axis] += k
    p, g = cube((16, 16, 16), start, a), cube((16, 16, 16), shifted, a)
    # the overlap is an a x a x (a - k) box
    assert dice(p, g) == pytest.approx(2 * (a - k) * a * a / (2 * a**3))


def test_hd95_single_voxels_known_distance_anisotropic():
    spacing = (2.5, 0.8, 0.8)
    a = voxel((8, 12, 12), (2, 5, 5))
    assert hd95(a, voxel((8, 12, 12), (5, 5, 5)), spacing) == pytest.approx(3 * 2.5)
    assert hd95(a, voxel((8, 12, 12), (4, 8, 5)), spacing) == pytest.approx(
        np.hypot(2 * 2.5, 3 * 0.8)
    )
    assert hd95(a, a, spacing) == 0.0


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (2.5, 0.8, 0.8)])
def test_hd95_concentric_spheres(spacing):
    shape = tuple(int(60 / s) for s in spacing)
    inner = sphere(shape, (30.0, 30.0, 30.0), 12.0, spacing)
    outer = sphere(shape, (30.0, 30.0, 30.0), 18.0, spacing)
    assert hd95(inner, outer, spacing) == pytest.approx(6.0, abs=max(spacing))


def test_hd95_empty_rules():
    a = cube((10, 10, 10), (2, 2, 2), 4)
    empty = np.zeros_like(a)
    assert hd95(empty, empty, (1, 1, 1)) == 0.0
    assert hd95(a, empty, (1, 1, 1)) == math.inf
    assert hd95(empty, a, (1, 1, 1)) == math.inf
    with pytest.raises(ValueError, match="spacing"):
        hd95(a, a, (1, 1))


def two_classes():
    gt = np.zeros((16, 16, 16), np.uint8)
    gt[1:7, 1:7, 1:7] = 1  # 216 voxels
    gt[9:15, 9:15, 9:15] = 2  # 216 voxels
    return gt


def test_interactive_rule_is_on_the_case_mean_not_per_class():
    gt = two_classes()
    pred = np.zeros_like(gt)
    pred[1:7, 1:7, 1:7] = 1  # class 1 perfect, class 2 missing: case DSC 0.5 > 0.2
    s = interactive_case_scores(pred, gt, (1.0, 1.0, 1.0))
    assert s["classes"][1] == {"dsc": 1.0, "nsd": 1.0}
    assert s["classes"][2] == {"dsc": 0.0, "nsd": 0.0}
    assert s["dsc"] == 0.5
    assert s["nsd"] == 0.5


def test_interactive_rule_zeroes_nsd_when_case_mean_dice_is_low():
    gt = two_classes()
    pred = np.zeros_like(gt)
    # a tolerance wider than the volume makes every surface element count: NSD 1 when computed
    wide = 100.0
    pred[1:7, 1:7, 1:3] = 1  # class 1: overlap 72 -> DSC 2*72/(72+216) = 0.5; class 2: 0
    s = interactive_case_scores(pred, gt, (1.0, 1.0, 1.0), [1, 2], tolerance=wide)
    assert s["classes"][1] == {"dsc": pytest.approx(0.5), "nsd": 1.0}
    assert s["dsc"] == pytest.approx(0.25)  # > 0.2: NSD computed
    assert s["nsd"] == pytest.approx(0.5)
    pred[1:7, 1:7, 2:7] = 0  # class 1: 36 voxels, DSC 2*36/252 = 0.2857; case mean 0.143
    s = interactive_case_scores(pred, gt, (1.0, 1.0, 1.0), [1, 2], tolerance=wide)
    assert s["classes"][1]["dsc"] == pytest.approx(72 / 252)
    assert s["dsc"] == pytest.approx(36 / 252)
    # the class DSC is above 0.2, but the case mean is not: no NSD, though it would be 1
    assert s["classes"][1]["nsd"] == 0.0 and s["nsd"] == 0.0
    assert surface_dice(pred == 1, gt == 1, (1.0, 1.0, 1.0), tolerance=wide) == 1.0


def test_interactive_no_class_is_nan():
    empty = np.zeros((4, 4, 4), np.uint8)
    s = interactive_case_scores(empty, empty, (1.0, 1.0, 1.0))
    assert s["classes"] == {} and math.isnan(s["dsc"]) and math.isnan(s["nsd"])


def test_semantic_scores_have_no_dice_rule():
    gt = two_classes()
    pred = np.zeros_like(gt)
    pred[1:7, 1:7, 1:2] = 1  # class 1: overlap 36 -> DSC 72/252; class 2 missing
    s = semantic_case_scores(pred, gt, (1.0, 1.0, 1.0), [1, 2], tolerance=100.0)
    assert s["classes"][1] == {"dsc": pytest.approx(72 / 252), "nsd": 1.0}
    assert s["classes"][2] == {"dsc": 0.0, "nsd": 0.0}
    assert s["dsc"] == pytest.approx(36 / 252)  # below 0.2, yet NSD is computed
    assert s["nsd"] == pytest.approx(0.5)
    assert interactive_case_scores(pred, gt, (1.0, 1.0, 1.0), [1, 2], 100.0)["nsd"] == 0.0


def test_semantic_scores_perfect_and_class_subset():
    gt = two_classes()
    s = semantic_case_scores(gt, gt, (2.0, 1.0, 1.0), [2])
    assert list(s["classes"]) == [2]
    assert s["dsc"] == 1.0 and s["nsd"] == 1.0


def test_scores_inside_bf16_autocast_equal_fp32():
    # a test step under --trainer.precision bf16-mixed computes its scores under autocast
    from segfm.evaluation.metrics import hd95, surface_dice

    pred = torch.zeros(12, 16, 16, dtype=torch.bool)
    gt = torch.zeros(12, 16, 16, dtype=torch.bool)
    pred[2:9, 3:11, 4:12] = True
    gt[3:10, 4:12, 4:13] = True
    spacing = (2.0, 1.0, 0.8)
    want = surface_dice(pred, gt, spacing), hd95(pred, gt, spacing)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = surface_dice(pred, gt, spacing), hd95(pred, gt, spacing)
    assert got == want and 0 < want[0] < 1
