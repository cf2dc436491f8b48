import numpy as np
import pytest
import torch

from segfm.data.transforms3d import (
    CT_RANGE,
    crop_box,
    crop_or_pad,
    random_flips,
    window,
    zscore_foreground,
)


def test_crop_box_of_centred_cube():
    array = np.zeros((20, 20, 20), dtype=np.uint8)
    array[6:14, 6:14, 6:14] = 1  # bounding box 6..13, centre 9.5
    box = crop_box((9.5, 9.5, 9.5), (8, 8, 8))
    assert box == ((6, 14),) * 3
    assert crop_or_pad(array, box).all()
    wider = crop_box((9.5, 9.5, 9.5), (12, 12, 12))
    assert wider == ((4, 16),) * 3  # two voxels of margin on each side
    assert crop_box((9.5, 9.5, 9.5), (8, 8, 8), jitter=(1, -2, 0)) == ((7, 15), (4, 12), (6, 14))
    # an even side cannot centre on a voxel: the box's middle (5.5) lies half a voxel after it
    assert crop_box((5.0, 5.0, 5.0), (3, 4, 3)) == ((4, 7), (4, 8), (4, 7))


def test_crop_or_pad_pads_at_borders():
    array = np.arange(5 * 6 * 7, dtype=np.float32).reshape(5, 6, 7)
    out = crop_or_pad(array, ((-2, 3), (4, 9), (0, 7)), pad_value=-1)
    assert out.shape == (5, 5, 7) and out.dtype == np.float32
    assert (out[:2] == -1).all() and (out[:, 2:] == -1).all()
    assert np.array_equal(out[2:, :2], array[0:3, 4:6])
    assert (crop_or_pad(array, ((10, 12), (0, 2), (0, 2)), 7) == 7).all()  # all outside
    channels = np.stack([array, -array])  # leading axes are kept
    assert crop_or_pad(channels, ((1, 3), (1, 3), (1, 3))).shape == (2, 2, 2, 2)


def test_window_clamps_and_rescales():
    hu = np.array([-2000, -1000, 0, 1000, 2000], dtype=np.int16)
    clamped, pad = window(hu, CT_RANGE, rescale=False)
    assert clamped.dtype == np.float32 and pad == -1000
    assert clamped.tolist() == [-1000, -1000, 0, 1000, 1000]
    scaled, pad = window(hu, CT_RANGE, rescale=True)
    assert scaled.tolist() == [0, 0, 0.5, 1, 1] and pad == 0
    lidc, _ = window(np.array([-1024.0, -362.0, 300.0, 500.0]), (-1024, 300), rescale=True)
    assert np.allclose(lidc, [0, 0.5, 1, 1])
    raw, pad = window(np.array([3.0, 5.0, 9.0]), None, rescale=False)
    assert raw.tolist() == [3, 5, 9] and pad == 3  # no range: pad with the minimum
    unit, pad = window(np.array([3.0, 5.0, 9.0]), None, rescale=True)
    assert np.allclose(unit, [0, 1 / 3, 1]) and pad == 0


def test_zscore_foreground_uses_voxels_above_zero():
    rng = np.random.default_rng(0)
    image = rng.normal(100, 20, size=(6, 7, 8)).astype(np.float32)
    image[:2] = -50.0  # background, excluded from the statistics
    out = zscore_foreground(image)
    mask = image > 0
    assert abs(out[mask].mean()) < 1e-5 and abs(out[mask].std() - 1) < 1e-4
    mean, std = image[mask].mean(), image[mask].std()
    assert np.allclose(out[~mask], (-50 - mean) / std, atol=1e-4)  # same map applied to all
    negative = -np.ones((2, 2, 2), dtype=np.float32)
    assert np.array_equal(zscore_foreground(negative), negative)
    assert zscore_foreground(np.full((2, 2, 2), 3.0)).tolist() == np.zeros((2, 2, 2)).tolist()


def test_random_flips_flip_image_and_label_together():
    image = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)  # asymmetric on every axis
    label = (image * 10).astype(np.int64)
    assert np.array_equal(random_flips([image], p=1.0)[0], image[::-1, ::-1, ::-1])
    assert np.array_equal(random_flips([image], p=0.0)[0], image)
    generator = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(40):
        flipped, flipped_label = random_flips([image, label], generator=generator)
        assert np.array_equal(flipped_label, (flipped * 10).astype(np.int64))
        corner = np.argwhere(image == flipped[0, 0, 0])[0]  # where the first voxel came from
        axes = tuple(int(a) for a in np.flatnonzero(corner))
        assert np.array_equal(np.flip(image, axes), flipped)
        seen.add(axes)
    assert len(seen) >= 6  # most of the 8 combinations of axes occur


@pytest.mark.parametrize("p", [0.0, 1.0])
def test_random_flips_returns_contiguous(p):
    out = random_flips([np.zeros((2, 3, 4))], p=p)[0]
    assert out.flags["C_CONTIGUOUS"]
