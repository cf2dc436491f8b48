import itertools

import numpy as np
import pytest
import torch

from segfm.prompts import Clicks, center_error_click, largest_error_component, sample_error_clicks

# --- evaluation rule: centre of the largest error component ----------------------------------


def test_single_missed_cube_gives_its_centre_positive():
    pred = np.zeros((16, 16, 16), bool)
    target = np.zeros_like(pred)
    target[3:8, 6:11, 9:14] = True  # 5^3, centre (5, 8, 11)
    assert center_error_click(pred, target) == ((5, 8, 11), True)


def test_false_positive_cube_gives_negative_click():
    pred = np.zeros((12, 12, 12), bool)
    pred[2:5, 2:5, 6:9] = True  # 3^3, centre (3, 3, 7)
    target = np.zeros_like(pred)
    assert center_error_click(pred, target) == ((3, 3, 7), False)


def test_fn_and_fp_next_to_each_other_sign_follows_target():
    # a target cube 5^3 predicted shifted: the largest error is the missed part
    target = np.zeros((20, 20, 20), bool)
    target[5:10, 5:10, 5:10] = True
    pred = np.zeros_like(target)
    pred[5:10, 5:10, 8:10] = True  # FN = target[..., 5:8] (75 voxels), no FP
    pred[15:17, 15:17, 15:17] = True  # FP of 8 voxels, far away
    coords, positive = center_error_click(pred, target)
    assert positive and target[coords] and not pred[coords]


def test_click_goes_to_the_larger_component_not_the_deeper_one():
    pred = np.zeros((20, 20, 20), bool)
    target = np.zeros_like(pred)
    target[2, 2:11, 2:11] = True  # flat slab: 81 voxels, every distance 1
    target[10:14, 10:14, 10:14] = True  # cube: 64 voxels, centre distances 2
    coords, positive = center_error_click(pred, target)
    assert positive and coords[0] == 2 and 2 <= coords[1] <= 10 and 2 <= coords[2] <= 10
    comp = largest_error_component(pred, target)
    assert comp.sum() == 81 and comp[2, 2:11, 2:11].all()


def test_prediction_equal_to_target_gives_none():
    target = np.zeros((6, 7, 8), bool)
    target[1:3, 2:5, 3:4] = True
    assert center_error_click(target.copy(), target) is None
    assert center_error_click(np.zeros((5, 5), bool), np.zeros((5, 5), bool)) is None
    assert not largest_error_component(target, target).any()


def test_two_d_square_centre():
    pred = np.ones((10, 12), bool)
    target = np.ones_like(pred)
    pred[1:8, 3:10] = False  # FN square 7x7, centre (4, 6)
    assert center_error_click(pred, target) == ((4, 6), True)


def test_connectivity_is_full_8_in_2d():
    target = np.zeros((12, 12), bool)
    target[0:3, 0:3] = True
    target[3:6, 3:6] = True  # touches the first square at one corner only: one component of 18
    target[8:11, 7:11] = True  # 12 voxels: the largest under 4-connectivity
    comp = largest_error_component(np.zeros_like(target), target)
    assert comp.sum() == 18 and comp[0, 0] and comp[5, 5] and not comp[9, 9]


def test_connectivity_is_full_26_in_3d():
    target = np.zeros((10, 10, 10), bool)
    target[0:2, 0:2, 0:2] = True
    target[2:4, 2:4, 2:4] = True  # corner contact only: one component of 16
    target[6:9, 6:9, 7:8] = True  # 9 voxels
    comp = largest_error_component(np.zeros_like(target), target)
    assert comp.sum() == 16 and comp[0, 0, 0] and comp[3, 3, 3]


def test_even_cube_tie_is_one_of_the_centres_and_reproducible():
    pred = np.zeros((12, 12, 12), bool)
    target = np.zeros_like(pred)
    target[4:8, 4:8, 4:8] = True  # 4^3: the 8 voxels {5, 6}^3 are all at distance 2
    centres = list(itertools.product((5, 6), repeat=3))  # np.argwhere order
    first, _ = center_error_click(pred, target)
    assert first in centres
    assert all(center_error_click(pred, target)[0] == first for _ in range(3))
    # the documented tie-break: RandomState(seed) picks among the ties in argwhere order
    for seed in (0, 7, 42):
        expected = centres[np.random.RandomState(seed).choice(len(centres))]
        assert center_error_click(pred, target, seed=seed)[0] == expected
    picks = {center_error_click(pred, target, seed=s)[0] for s in range(30)}
    assert len(picks) > 1 and picks <= set(centres)


def test_component_at_the_array_corner_counts_outside_as_background():
    pred = np.zeros((10, 10, 10), bool)
    target = np.zeros_like(pred)
    target[0:3, 0:3, 0:3] = True
    # (1, 1, 1) is 2 from both the outside (-1) and the background (3); (0, 0, 0) only 1
    assert center_error_click(pred, target) == ((1, 1, 1), True)


def test_component_along_a_2d_border():
    pred = np.zeros((9, 9), bool)
    target = np.zeros_like(pred)
    target[0:5, :] = True  # full-width band touching three borders: centre row 2, any column
    coords, positive = center_error_click(pred, target)
    assert positive and coords[0] == 2 and 2 <= coords[1] <= 6  # 2 from left/right edges


def test_large_crop_uses_the_coarse_grid():
    pred = np.zeros((20, 20, 20), bool)
    target = np.zeros_like(pred)
    target[4:13, 4:13, 4:13] = True  # 9^3, centre 8; padded crop 2:15 (13^3)
    assert center_error_click(pred, target) == ((8, 8, 8), True)
    # coarse grid: crop blocks of 2 -> cube blocks 1..5 of 7, centre block 3 = voxels 8, 9
    picks = {center_error_click(pred, target, seed=s, max_voxels=100)[0] for s in range(30)}
    assert picks <= set(itertools.product((8, 9), repeat=3)) and len(picks) > 1


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="one shape"):
        center_error_click(np.zeros((3, 3), bool), np.zeros((3, 4), bool))
    with pytest.raises(ValueError, match="2D or 3D"):
        center_error_click(np.zeros(5, bool), np.zeros(5, bool))


# --- training rule: uniform over the error ---------------------------------------------------


def _random_masks(shape, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g) > 0.6, torch.rand(shape, generator=g) > 0.5


@pytest.mark.parametrize("shape", [(8, 6, 7, 5), (8, 9, 11)])
def test_clicks_lie_in_the_error_with_the_right_sign(shape):
    pred, target = _random_masks(shape, 3)
    coords, labels = sample_error_clicks(pred, target, torch.Generator().manual_seed(0))
    assert coords.shape == (shape[0], len(shape) - 1) and coords.dtype == torch.int64
    assert labels.shape == (shape[0],) and labels.dtype == torch.int64
    for b in range(shape[0]):
        at = (b, *coords[b].tolist())
        assert pred[at] != target[at]  # an error voxel
        assert labels[b].item() == int(target[at].item())  # FN -> 1, FP -> 0


def test_no_error_and_empty_target_fallbacks():
    target = torch.zeros(3, 5, 6, 7, dtype=torch.bool)
    target[0, 1:3, 2:4, 3:5] = True
    pred = target.clone()  # item 0: no error, non-empty target; items 1, 2: both empty
    pred[2, 4, 5, 6] = True  # item 2: a single false positive
    for seed in range(5):
        coords, labels = sample_error_clicks(pred, target, torch.Generator().manual_seed(seed))
        assert labels.tolist() == [1, 0, 0]
        assert target[(0, *coords[0].tolist())]  # a voxel of the target
        assert coords[2].tolist() == [4, 5, 6]  # the only error voxel
        assert all(0 <= c < s for c, s in zip(coords[1].tolist(), (5, 6, 7), strict=True))


def test_seeded_clicks_are_reproducible():
    pred, target = _random_masks((6, 10, 10, 10), 1)
    a = sample_error_clicks(pred, target, torch.Generator().manual_seed(5))
    b = sample_error_clicks(pred, target, torch.Generator().manual_seed(5))
    c = sample_error_clicks(pred, target, torch.Generator().manual_seed(6))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_clicks_are_uniform_over_the_error():
    n = 4000
    target = torch.zeros(n, 4, 4, dtype=torch.bool)
    pred = torch.zeros_like(target)
    target[:, 0, 0] = target[:, 1, 2] = target[:, 3, 3] = True  # 3 FN voxels
    pred[:, 2, 1] = True  # 1 FP voxel
    target[:, 0, 3] = pred[:, 0, 3] = True  # a true positive: never clicked
    coords, labels = sample_error_clicks(pred, target, torch.Generator().manual_seed(0))
    counts = {k: 0 for k in [(0, 0), (1, 2), (3, 3), (2, 1)]}
    for yx in map(tuple, coords.tolist()):
        counts[yx] += 1  # KeyError if a non-error voxel were clicked
    assert all(800 < v < 1200 for v in counts.values())  # expected 1000, sd about 27
    assert labels.sum().item() == n - counts[(2, 1)]


def test_rejects_non_bool_prediction():
    with pytest.raises(ValueError, match="threshold"):
        sample_error_clicks(torch.rand(2, 4, 4), torch.zeros(2, 4, 4, dtype=torch.bool))


# --- accumulated clicks ----------------------------------------------------------------------


def test_clicks_as_tensors():
    clicks = Clicks(ndim=3)
    assert [t.shape for t in clicks.as_tensors()] == [(1, 0, 3), (1, 0)]
    clicks.add((1, 2, 3), True)
    clicks.add((4, 5, 6), False)
    coords, labels = clicks.as_tensors()
    assert coords.dtype == torch.float32 and coords.tolist() == [[[1, 2, 3], [4, 5, 6]]]
    assert labels.dtype == torch.int64 and labels.tolist() == [[1, 0]]
    with pytest.raises(ValueError, match="3 coordinates"):
        clicks.add((1, 2), True)


# --- the official compute_edt: padding not clipped to the volume -----------------------------
# A 13^3 missed cube at x = 0..12 (touching the border), z = y = 4..16 in a (24, 24, 20) volume.
# Padding int(0.25 * 13) = 3 per axis. Padded box unclipped: 19^3 = 6859 voxels; clipped to the
# volume (x from 0 instead of -3): 19 * 19 * 16 = 5776 voxels.
# Full resolution: per-axis distance min(i + 1, 13 - i) peaks at 7 on local index 6 only, so
# the click is (10, 10, 6).
# Coarse grid of the official rule: it starts at the box start minus 3 (z, y from 1, x from -3),
# so cell k covers {start + 2k, start + 2k + 1}; the cube fills cells 1..7 on every axis and
# cells 0 and 8 are zeros: cell distances min(k, 8 - k) peak at 4 on cell 4 alone, i.e.
# z, y in {9, 10} and x in {5, 6}: 8 tied voxels, in argwhere order
# (9,9,5) (9,9,6) (9,10,5) (9,10,6) (10,9,5) (10,9,6) (10,10,5) (10,10,6).
# The tie-break np.random.seed(42); np.random.choice(8) gives 6: (10, 10, 5).
CUBE_TIES = list(itertools.product((9, 10), (9, 10), (5, 6)))


def _border_cube() -> tuple[np.ndarray, np.ndarray]:
    target = np.zeros((24, 24, 20), bool)
    target[4:17, 4:17, 0:13] = True
    return np.zeros_like(target), target


def test_coarse_decision_uses_the_unclipped_padded_box():
    pred, target = _border_cube()
    assert np.random.RandomState(42).choice(8) == 6  # the official tie-break draw
    assert CUBE_TIES[6] == (10, 10, 5)
    # 5776 (clipped) <= 6000 < 6859 (unclipped): the official rule pools, the clipped one did not
    assert center_error_click(pred, target, max_voxels=6000) == ((10, 10, 5), True)
    # the boundary is "more than max_voxels" voxels of the unclipped box
    assert center_error_click(pred, target, max_voxels=6858) == ((10, 10, 5), True)
    assert center_error_click(pred, target, max_voxels=6859) == ((10, 10, 6), True)


def test_coarse_grid_starts_at_the_box_start_minus_the_padding():
    pred, target = _border_cube()
    # both rules pool here; a grid starting at the clipped box (x = 0) would put the best x
    # cells at {6, 7} (click (10, 10, 6)); the official grid starts at x = -3: x in {5, 6}
    picks = {center_error_click(pred, target, seed=s, max_voxels=100)[0] for s in range(40)}
    assert picks == set(CUBE_TIES)
    assert center_error_click(pred, target, max_voxels=100) == ((10, 10, 5), True)


def test_coarse_grid_without_background_along_an_axis():
    # a 2-slice slab filling a (2, 8, 8) volume: padding 1 in z (padded z = 4, two cells that
    # both hold the slab: no zero cell along z) and 2 in y, x (padded 12, cells 1..4 hold the
    # slab, 0 and 5 are zeros). Cell distances along y, x: min(k, 5 - k), peak 2 on cells
    # {2, 3}, i.e. padded 4..7, local 2..5; along z any cell. The official transform has no
    # zero layer beyond the coarse array: z decides nothing, so ties are z in {0, 1} and
    # y, x in {2..5}: 32 voxels; np.random.RandomState(42).choice(32) == 6 -> (0, 3, 4).
    target = np.ones((2, 8, 8), bool)
    ties = list(itertools.product((0, 1), range(2, 6), range(2, 6)))
    assert np.random.RandomState(42).choice(32) == 6
    assert ties[6] == (0, 3, 4)
    assert center_error_click(np.zeros_like(target), target, max_voxels=10) == ((0, 3, 4), True)
    picks = {
        center_error_click(np.zeros_like(target), target, seed=s, max_voxels=10)[0]
        for s in range(200)
    }
    assert picks == set(ties)


def test_padded_box_over_60_million_voxels_is_pooled():
    # a missed slab filling a (2, 2600, 2600) volume (13.5 M voxels). Padding 1 in z and 650 in
    # y, x: the unclipped padded box is 4 * 3900 * 3900 = 60.84 M > 60 M voxels (clipped to the
    # volume it would be 13.5 M: no pooling, and every voxel would tie at distance 1 along z).
    # Pooled: along y, x the slab fills cells 325..1624 of 1950, distances
    # min(k - 324, 1625 - k) peak at 650 on cells 974, 975 = padded 1948..1951 = local
    # 1298..1301; along z both cells hold the slab (no zero): ties z in {0, 1}, y, x in
    # 1298..1301, 32 voxels; RandomState(42).choice(32) == 6 -> (0, 1299, 1300).
    target = np.ones((2, 2600, 2600), bool)
    assert 4 * 3900 * 3900 > 60_000_000 >= target.size
    assert center_error_click(np.zeros_like(target), target) == ((0, 1299, 1300), True)
