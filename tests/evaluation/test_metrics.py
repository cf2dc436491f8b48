import numpy as np
import pytest

from segfm.evaluation.metrics import case_scores, dice, surface_dice


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


def test_case_scores_nsd_zero_below_dice_threshold():
    gt = np.zeros((16, 16, 16), np.int64)
    gt[2:10, 2:10, 2:10] = 1
    gt[11:15, 11:15, 11:15] = 2
    pred = np.zeros_like(gt)
    pred[2:10, 2:10, 2:10] = 1
    pred[11:15, 11:13, 14:16] = 2  # overlap 4*2*1 = 8 of 64 + 16 voxels: DSC exactly 0.2
    scores = case_scores(pred, gt, (1.0, 1.0, 1.0), [1, 2])
    assert scores[1] == {"dsc": 1.0, "nsd": 1.0}
    assert scores[2]["dsc"] == pytest.approx(2 * 8 / 80)
    assert scores[2]["nsd"] == 0.0


def test_case_scores_nsd_computed_above_threshold():
    gt = np.zeros((16, 16, 16), np.int64)
    gt[2:10, 2:10, 2:10] = 3
    pred = np.zeros_like(gt)
    pred[2:10, 2:10, 3:11] = 3
    scores = case_scores(pred, gt, (1.0, 1.0, 1.0), [3], tolerance=2.0)
    assert scores[3]["dsc"] == pytest.approx(2 * 448 / 1024)
    assert scores[3]["nsd"] == pytest.approx(1.0)
