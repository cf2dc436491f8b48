"""Resampling on a known shift; deedsBCV's displacement file layout and upsampling."""

import numpy as np
import pytest

from segfm.errors import ConfigError, DataError
from segfm.tracking.deeds import (
    finest_step,
    read_displacements,
    run_deeds,
    upsample_displacements,
)
from segfm.tracking.resample import Displacement, warp

AFFINE = np.array([[3.0, 0, 0, -10], [0, 1.5, 0, 4], [0, 0, 1.5, 7], [0, 0, 0, 1]])  # (z,y,x)


def test_warp_known_shift():
    moving = np.random.default_rng(0).standard_normal((8, 12, 14)).astype(np.float32)
    shift = np.eye(4)
    shift[:3, 3] = [3.0, -3.0, 4.5]  # fixed world -> moving world: +1, -2, +3 voxels
    moved = warp(moving, AFFINE, AFFINE, moving.shape, shift, cval=0)
    np.testing.assert_allclose(moved[:7, 2:, :11], moving[1:, :10, 3:], atol=1e-6)
    assert np.all(moved[7] == 0)  # pulled from outside the moving image


def test_warp_onto_another_grid_and_labels():
    labels = np.zeros((8, 12, 14), np.uint8)
    labels[2:5, 3:9, 4:10] = 3
    fine = AFFINE.copy()
    fine[:3, :3] /= 2  # half-size voxels, same origin
    moved = warp(labels, AFFINE, fine, (16, 24, 28), order=0, cval=0)
    assert moved.dtype == np.uint8 and set(np.unique(moved)) == {0, 3}
    np.testing.assert_array_equal(moved[::2, ::2, ::2], labels)


def test_displacement_file_layout(tmp_path):
    """deedsBCV writes u, v, w blocks in Fortran order of NIfTI (i, j, k) = segfm (x, y, z)."""
    m, n, o, step = 12, 9, 6, 3  # NIfTI dims (i, j, k)
    rng = np.random.default_rng(1)
    u, v, w = (rng.standard_normal((m // step, n // step, o // step)) for _ in range(3))
    flat = np.concatenate([a.ravel(order="F") for a in (u, v, w)]).astype("<f4")
    flat.tofile(tmp_path / "x_displacements.dat")
    field = read_displacements(tmp_path / "x_displacements.dat", (o, n, m), step)
    assert field.shape == (3, o // step, n // step, m // step)
    np.testing.assert_allclose(field[0], w.transpose(2, 1, 0), rtol=1e-6)  # dz along k
    np.testing.assert_allclose(field[1], u.transpose(2, 1, 0), rtol=1e-6)  # dy along j
    np.testing.assert_allclose(field[2], v.transpose(2, 1, 0), rtol=1e-6)  # dx along i
    with pytest.raises(DataError, match="grid step 2"):
        read_displacements(tmp_path / "x_displacements.dat", (o, n, m), 2)


def test_upsampling_is_deeds_upsample():
    """Control point c sits at voxel c * step: a linear field stays linear until the last one."""
    coarse = np.zeros((3, 2, 3, 4), np.float32)
    coarse[2] = np.arange(4)[None, None, :] * 2.0  # dx = 2 * c along x
    full = upsample_displacements(coarse, (6, 9, 12))
    x = np.arange(12)
    expected = np.minimum(x * 4 / 12, 3) * 2.0
    np.testing.assert_allclose(full[2, 0, 0], expected, atol=1e-6)
    assert np.all(full[:2] == 0)


def test_constant_displacement_moves_world_points():
    field = np.zeros((3, 4, 4, 4), np.float32)
    field[1] = 2.0  # two voxels along y
    moved = Displacement(field, AFFINE).apply(np.array([[0.0, 10, 20], [5, 5, 5]]))
    np.testing.assert_allclose(moved, [[0, 13, 20], [5, 8, 5]])


def test_finest_step_and_missing_binary(tmp_path):
    assert finest_step("-l 3 -G 5x4x3 -L 5x4x3 -Q 2x2x1") == 3
    with pytest.raises(ConfigError, match="-G"):
        finest_step("-l 3")
    with pytest.raises(ConfigError, match="not a file"):
        run_deeds(str(tmp_path / "nope"), tmp_path / "a", tmp_path / "b", tmp_path / "c")
