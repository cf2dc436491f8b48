import numpy as np
import pytest

from segfm.data.io.geometry import (
    isotropic_grid,
    map_points,
    resample_nearest,
    to_canonical,
    voxel_size,
)


def _affine(columns_xyz, origin):
    """Affine whose columns are the world steps of the file's x, y, z index."""
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(columns_xyz, dtype=float).T
    affine[:3, 3] = origin
    return affine


def _world(affine, zyx):
    """World point of an array index (z, y, x), written out by hand."""
    z, y, x = zyx
    return affine[:3, 0] * x + affine[:3, 1] * y + affine[:3, 2] * z + affine[:3, 3]


def _value_positions(array, affine):
    """World position of each (distinct) value of an array."""
    return {int(array[idx]): _world(affine, idx) for idx in np.ndindex(array.shape)}


LPS = _affine([[-0.8, 0, 0], [0, -0.8, 0], [0, 0, 3.0]], [10, 20, -30])
PERMUTED = _affine([[0, 0, 2.0], [-1.0, 0, 0], [0, 1.5, 0]], [5, -5, 7])  # x index runs along S


@pytest.mark.parametrize("affine", [LPS, PERMUTED], ids=["lps", "permuted"])
def test_to_canonical_keeps_every_value_at_its_world_position(affine):
    array = np.arange(4 * 5 * 6).reshape(4, 5, 6)  # distinct values [Z, Y, X]
    moved, new_affine = to_canonical(array, affine)
    assert sorted(moved.shape) == [4, 5, 6]
    # RAS+: the file's x, y, z index runs towards +x, +y, +z of the world, in that order
    step = new_affine[:3, :3]
    assert np.allclose(step, np.diag(np.diag(step))) and (np.diag(step) > 0).all()
    before, after = _value_positions(array, affine), _value_positions(moved, new_affine)
    for value, position in before.items():
        assert np.allclose(after[value], position)


def test_to_canonical_of_lps_flips_rows_and_columns():
    array = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    moved, new_affine = to_canonical(array, LPS)
    assert np.array_equal(moved, array[:, ::-1, ::-1])
    assert np.allclose(voxel_size(new_affine), [3.0, 0.8, 0.8])


def test_resample_nearest_identity_and_integer_shift():
    array = np.arange(1, 3 * 4 * 5 + 1).reshape(3, 4, 5)
    assert np.array_equal(resample_nearest(array, LPS, LPS, array.shape), array)
    shifted = LPS.copy()
    shifted[:3, 3] += 2 * LPS[:3, 0]  # target voxel x=0 is source voxel x=2
    out = resample_nearest(array, LPS, shifted, array.shape)
    assert np.array_equal(out[..., :3], array[..., 2:])
    assert (out[..., 3:] == 0).all()  # beyond the source grid


def test_resample_nearest_to_coarser_grid_takes_nearest_voxel():
    fine = np.diag([1.0, 1.0, 1.0, 1.0])
    coarse = np.diag([2.0, 1.0, 1.0, 1.0])  # x step 2 mm, same origin
    array = np.arange(1, 9).reshape(1, 1, 8)
    out = resample_nearest(array, fine, coarse, (1, 1, 4))
    assert out.tolist() == [[[1, 3, 5, 7]]]
    # half-voxel offset: coarse voxel j sits at x = 2 j + 0.4 mm, nearest fine voxel 2 j
    offset = coarse.copy()
    offset[0, 3] = 0.4
    assert resample_nearest(array, fine, offset, (1, 1, 4)).tolist() == [[[1, 3, 5, 7]]]


def test_resample_nearest_inverts_reorientation_exactly():
    array = np.random.default_rng(0).integers(0, 6, size=(5, 6, 7)).astype(np.uint8)
    moved, new_affine = to_canonical(array, PERMUTED)
    back = resample_nearest(moved, new_affine, PERMUTED, array.shape)
    assert back.dtype == np.uint8 and np.array_equal(back, array)


def test_map_points_known_and_round_trip():
    coarse = np.diag([2.0, 2.0, 2.0, 1.0])
    coarse[:3, 3] = (1, 1, 1)
    fine = np.eye(4)
    points = np.array([[0.0, 0.0, 0.0], [1.0, 2.0, 3.0]])  # (z, y, x) on the coarse grid
    assert np.allclose(map_points(points, coarse, fine), [[1, 1, 1], [3, 5, 7]])
    # through a flipped, permuted grid and back
    there = map_points(points, coarse, PERMUTED)
    assert np.allclose(map_points(there, PERMUTED, coarse), points)
    world = np.array([_world(coarse, p) for p in points])
    assert np.allclose([_world(PERMUTED, p) for p in there], world)


def test_isotropic_grid_keeps_centre_and_field_of_view():
    shape = (10, 40, 30)
    grid, new_shape = isotropic_grid(LPS, shape, 1.5)
    assert np.allclose(voxel_size(grid), 1.5)
    assert new_shape == (20, 21, 16)  # round(10 * 3 / 1.5), round(40 * .8 / 1.5), 30 * .8 / 1.5
    centre_old = _world(LPS, [(n - 1) / 2 for n in shape])
    centre_new = _world(grid, [(n - 1) / 2 for n in new_shape])
    assert np.allclose(centre_old, centre_new)
    # directions are kept: the new x index still runs towards -x of the world
    assert grid[0, 0] < 0 and grid[2, 2] > 0
