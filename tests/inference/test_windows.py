"""Windows over a region: placement, padded crops and pasting."""

from __future__ import annotations

import itertools

import pytest
import torch

from segfm.inference.windows import crop_padded, inside, paste_add, region_windows, windows_box


def test_a_region_that_fits_gets_one_centred_window() -> None:
    starts = region_windows((10, 20, 30), (14, 30, 31), size=16)
    assert starts == [(4, 17, 22)]  # centres 12, 25, 30 (floor of the odd half) minus 8


def test_a_long_region_is_covered_with_overlap() -> None:
    starts = region_windows((0, 5, 5), (100, 6, 6), size=32, overlap=0.25)
    firsts = sorted(s[0] for s in starts)
    assert firsts[0] == 0 and firsts[-1] + 32 == 100  # flush with both ends
    covered = set()
    for f in firsts:
        covered |= set(range(f, f + 32))
    assert covered == set(range(100))
    gaps = [b - a for a, b in itertools.pairwise(firsts)]
    assert max(gaps) <= 24  # at least a quarter of each window shared
    assert all(s[1:] == (-11, -11) for s in starts)  # voxel 5 at the window centre, 16


@pytest.mark.parametrize("overlap", [-0.1, 1.0])
def test_bad_overlap(overlap: float) -> None:
    with pytest.raises(ValueError, match="overlap"):
        region_windows((0,), (4,), 2, overlap)


def test_empty_region() -> None:
    with pytest.raises(ValueError, match="empty region"):
        region_windows((3, 3), (3, 5), 4)


def test_windows_box_is_clipped_to_the_volume() -> None:
    assert windows_box([(-4, 2), (10, 6)], 8, (12, 20)) == ((0, 2), (12, 14))


def test_crop_padded_copies_inside_and_fills_outside() -> None:
    volume = torch.arange(5 * 6, dtype=torch.float32).view(5, 6)
    patch = crop_padded(volume, (-2, 3), 4, value=-1.0)
    assert patch.shape == (4, 4)
    assert (patch[:2] == -1).all()
    assert (patch[2:, 3:] == -1).all()  # columns 6.. lie past the end
    assert torch.equal(patch[2:, :3], volume[0:2, 3:6])


def test_crop_padded_keeps_leading_axes() -> None:
    volume = torch.randn(2, 3, 4, 4, 4)
    patch = crop_padded(volume, (1, 1, 1), 2)
    assert torch.equal(patch, volume[..., 1:3, 1:3, 1:3])


def test_paste_add_adds_the_overlap_only() -> None:
    canvas = torch.zeros(4, 4)
    paste_add(canvas, torch.ones(3, 3), (-1, 2))
    expected = torch.zeros(4, 4)
    expected[0:2, 2:4] = 1
    assert torch.equal(canvas, expected)
    paste_add(canvas, torch.ones(2, 2), (10, 10))  # no overlap: nothing happens
    assert torch.equal(canvas, expected)


def test_inside() -> None:
    points = torch.tensor([[0, 0, 0], [3, 3, 3], [4, 0, 0], [-1, 2, 2]])
    assert inside(points, (0, 0, 0), 4).tolist() == [True, True, False, False]


def test_crop_padded_of_a_window_wholly_outside_is_all_fill() -> None:
    # a previous step's box that the next cube misses: the mask prompt crop is all fill
    volume = torch.arange(35 * 4 * 4, dtype=torch.float32).reshape(35, 4, 4)
    for start in [(40, 0, 0), (-40, 0, 0), (0, 9, -9), (33, 2, 2)]:
        patch = crop_padded(volume, start, 6, value=-1.0)
        assert patch.shape == (6, 6, 6), start
    assert bool((crop_padded(volume, (40, 0, 0), 6, value=-1.0) == -1).all())
    edge = crop_padded(volume, (33, 2, 2), 6, value=-1.0)
    assert torch.equal(edge[:2, :2, :2], volume[33:, 2:, 2:])
    assert int((edge != -1).sum()) == 8
