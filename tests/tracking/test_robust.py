"""Robust fits on exact and outlier-contaminated correspondences."""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from segfm.tracking.robust import (
    clip_rotation,
    fit_affine_lstsq,
    huber_irls,
    kabsch,
    ransac,
    rotation_angle,
)


def _rigid(angle=0.15, shift=(5.0, -3.0, 8.0)):
    t = np.eye(4)
    t[:3, :3] = Rotation.from_rotvec(
        angle * np.array([0.3, -0.5, 0.8]) / np.linalg.norm([0.3, -0.5, 0.8])
    ).as_matrix()
    t[:3, 3] = shift
    return t


def _affine():
    t = _rigid()
    t[:3, :3] = t[:3, :3] @ np.array([[1.1, 0.05, 0], [0, 0.92, 0.03], [0.02, 0, 1.05]])
    return t


def _apply(t, p):
    return p @ t[:3, :3].T + t[:3, 3]


@pytest.fixture
def points():
    return np.random.default_rng(0).uniform(-60, 60, (200, 3))


def test_huber_matches_least_squares_without_outliers_and_resists_them():
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.uniform(0, 10, (100, 1)), np.ones((100, 1))], axis=1)
    y = x @ np.array([2.0, -1.0]) + rng.normal(0, 0.05, 100)
    np.testing.assert_allclose(huber_irls(x, y), [2.0, -1.0], atol=0.02)
    y[:20] += 50  # 20% gross outliers
    ols = np.linalg.lstsq(x, y, rcond=None)[0]
    assert abs(ols[1] + 1) > 5
    np.testing.assert_allclose(huber_irls(x, y), [2.0, -1.0], atol=0.1)
    assert huber_irls(x, np.stack([y, y], 1)).shape == (2, 2)


def test_exact_fits(points):
    rigid, affine = _rigid(), _affine()
    np.testing.assert_allclose(kabsch(points, _apply(rigid, points)), rigid, atol=1e-9)
    np.testing.assert_allclose(fit_affine_lstsq(points, _apply(affine, points)), affine, atol=1e-9)


@pytest.mark.parametrize("kind", ["rigid", "affine"])
def test_ransac_ignores_outliers(points, kind):
    truth = _rigid() if kind == "rigid" else _affine()
    dst = _apply(truth, points) + np.random.default_rng(2).normal(0, 0.5, points.shape)
    bad = np.random.default_rng(3).choice(len(points), 60, replace=False)  # 30% wrong matches
    dst[bad] = np.random.default_rng(4).uniform(-80, 80, (60, 3))
    naive = fit_affine_lstsq(points, dst) if kind == "affine" else kabsch(points, dst)
    fitted, inliers = ransac(points, dst, kind, threshold=3.0)
    corners = np.array([[x, y, z] for x in (-60, 60) for y in (-60, 60) for z in (-60, 60)])
    err = np.linalg.norm(_apply(fitted, corners) - _apply(truth, corners), axis=1).max()
    naive_err = np.linalg.norm(_apply(naive, corners) - _apply(truth, corners), axis=1).max()
    assert err < 1.0 < naive_err
    assert not inliers[bad].any() and inliers.sum() >= 130


def test_rotation_clipping_keeps_the_centre():
    t = _rigid(angle=0.5)
    centre = np.array([10.0, 20.0, -5.0])
    clipped = clip_rotation(t, 0.2, centre)
    assert rotation_angle(clipped) == pytest.approx(0.2)
    np.testing.assert_allclose(_apply(clipped, centre), _apply(t, centre))
    np.testing.assert_allclose(clip_rotation(t, 1.0, centre), t)


def test_bad_inputs():
    with pytest.raises(ValueError, match="at least 4"):
        fit_affine_lstsq(np.zeros((3, 3)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="kind"):
        ransac(np.zeros((5, 3)), np.zeros((5, 3)), "similarity")
