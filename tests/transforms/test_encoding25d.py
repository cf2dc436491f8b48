import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segfm.transforms.encoding25d import (
    decode_slices,
    encode_slice,
    encode_volume,
    multi_view_axes,
    neighbour_indices,
    pad_square,
    plan,
    resample_image,
    resample_label,
    slice_axis,
    square_padding,
    stack_neighbours,
    unpad,
)
from segfm.transforms.resize import nearest_indices


def numbered(d, h=4, w=4, axis=0):
    """A volume whose slice k along ``axis`` holds the value 10 * k everywhere."""
    values = 10 * np.arange(d, dtype=np.uint8)
    shape = [1, 1, 1]
    shape[axis] = d
    full = [h, w]
    full.insert(axis, d)
    return np.broadcast_to(values.reshape(shape), full).copy()


# --- neighbours ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (1, [[0, 0, 0]]),
        (2, [[0, 1, 1], [1, 0, 0]]),
        (4, [[0, 1, 1], [1, 0, 2], [2, 1, 3], [3, 2, 2]]),
    ],
)
def test_neighbour_indices_mirror_the_edges(n, expected):
    assert neighbour_indices(n).tolist() == expected


def test_neighbour_indices_need_a_slice():
    with pytest.raises(ValueError, match="n=0"):
        neighbour_indices(0)


@pytest.mark.parametrize("kind", ["numpy", "torch"])
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_stack_neighbours_gives_the_known_slices(kind, axis):
    volume = numbered(4, axis=axis)
    if kind == "torch":
        volume = torch.from_numpy(volume)
    stacked = stack_neighbours(volume, axis)
    assert tuple(stacked.shape) == (4, 3, 4, 4)
    channels = np.asarray(stacked)[:, :, 0, 0].tolist()
    assert channels == [[0, 10, 10], [10, 0, 20], [20, 10, 30], [30, 20, 20]]
    assert (np.asarray(stacked) == np.asarray(stacked)[:, :, :1, :1]).all()


def test_one_slice_volume_gives_three_copies():
    slices, geometry = encode_volume(np.full((1, 6, 6), 77, np.uint8), size=6)
    assert slices.shape == (1, 3, 6, 6)
    assert (slices == 77).all()
    assert geometry.padding == (0, 0, 0, 0)


# --- padding -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("h", "w", "tool", "exact"),
    [
        (3, 6, (1, 1, 0, 0), (1, 2, 0, 0)),  # odd diff: the tool stays one row short
        (6, 3, (0, 0, 1, 1), (0, 0, 1, 2)),
        (4, 8, (2, 2, 0, 0), (2, 2, 0, 0)),  # even diff: both square
        (5, 5, (0, 0, 0, 0), (0, 0, 0, 0)),
    ],
)
def test_square_padding(h, w, tool, exact):
    assert square_padding(h, w) == tool
    assert square_padding(h, w, exact=True) == exact


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_pad_square_centres_with_zeros_and_unpads(kind):
    x = np.ones((2, 3, 6), np.float32)
    x = torch.from_numpy(x) if kind == "torch" else x
    padded, padding = pad_square(x)
    assert tuple(padded.shape) == (2, 5, 6)  # 3 + 1 + 1 rows: not square
    exact, exact_padding = pad_square(x, exact=True)
    assert tuple(exact.shape) == (2, 6, 6)
    got = np.asarray(exact)
    assert got[:, 0].sum() == 0 and got[:, 4:].sum() == 0 and got[:, 1:4].min() == 1
    assert np.array_equal(np.asarray(unpad(exact, exact_padding)), np.asarray(x))
    assert np.array_equal(np.asarray(unpad(padded, padding)), np.asarray(x))


# --- axis rules ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "axis"),
    [
        ((10, 40, 40), 0),
        ((10, 40, 36), 0),
        ((40, 10, 40), 1),  # dims 1 and 2 differ (ratio 1.2): the shortest axis
        ((40, 40, 10), 2),
        ((5, 64, 30), 0),  # ratio 0.72, but axis 0 is the shortest
        ((100, 60, 100), 1),  # ratio exactly 0.5 counts
        ((100, 61, 100), 0),  # ratio 0.484
    ],
)
def test_slice_axis(shape, axis):
    assert slice_axis(shape) == axis


@pytest.mark.parametrize(
    ("shape", "spacing", "axes"),
    [
        ((30, 32, 34), (1.0, 1.0, 1.0), [0, 1, 2]),
        ((30, 32, 34), (1.0, 1.0, 1.1), [0, 1, 2]),  # spread 0.091 <= 0.1
        ((30, 32, 34), (1.0, 1.0, 1.2), [0]),  # spread 0.167
        ((20, 32, 34), (1.0, 1.0, 1.0), [0]),  # D vs W ratio 0.52: not near-cubic
        ((40, 10, 40), (1.0, 1.0, 1.0), [1]),
    ],
)
def test_multi_view_axes(shape, spacing, axes):
    assert multi_view_axes(shape, spacing) == axes


# --- resizing ------------------------------------------------------------------------------------


def test_encode_volume_sizes_and_values():
    volume = np.random.default_rng(0).integers(0, 256, (3, 5, 9)).astype(np.uint8)
    slices, geometry = encode_volume(volume, size=16)
    assert slices.shape == (3, 3, 16, 16) and slices.dtype == torch.float32
    assert geometry.padding == (2, 2, 0, 0) and geometry.padded == (9, 9)
    assert torch.equal(slices, slices.round()) and slices.min() >= 0 and slices.max() <= 255
    # channel 1 of slice 0 is slice 1, channel 0 of slice 1
    assert torch.equal(slices[0, 1], slices[1, 0]) and torch.equal(slices[0, 2], slices[1, 0])
    assert torch.equal(encode_slice(volume, geometry, 2), slices[2])


def test_constant_slices_stay_constant_and_padding_is_zero():
    volume = np.full((2, 8, 8), 100, np.uint8)
    slices, _ = encode_volume(volume, size=20)
    assert (slices == 100).all()
    padded, _ = encode_volume(np.full((2, 4, 8), 100, np.uint8), size=8)
    assert (padded[:, :, 0] == 0).all() and (padded[:, :, 4] == 100).all()


def test_tool_rounds_and_clips_inference_truncates():
    board = (np.indices((1, 8, 8)).sum(0) % 2 * 255).astype(np.uint8)
    tool = resample_image(board, plan(board.shape, 24))
    raw = resample_image(board, plan(board.shape, 24, exact_padding=True), inference=True)
    assert tool.min() == 0 and tool.max() == 255
    assert raw.min() < 0 and raw.max() > 255  # bicubic overshoot, kept as the original's .int()
    assert torch.equal(raw, raw.trunc())
    exact = F.interpolate(torch.from_numpy(board).float()[None], size=(24, 24), mode="bicubic")
    assert torch.equal(raw, exact[0].trunc())


def test_float_images_are_truncated_like_a_uint8_cast():
    volume = np.full((1, 4, 4), 12.9, np.float32)
    assert (resample_image(volume, plan(volume.shape, 4)) == 12).all()


def test_labels_keep_ids_above_255():
    label = np.zeros((2, 4, 4), np.uint16)
    label[0, :2, :2], label[1, 2:, 2:] = 300, 65535
    out = resample_label(label, plan(label.shape, 8))
    assert out.dtype == torch.int64
    assert set(out.unique().tolist()) == {0, 300, 65535}
    assert (out[0, :4, :4] == 300).all()


def test_nearest_torch_rule_equals_f_interpolate():
    for n_in, n_out in [(6, 34), (7, 9), (512, 37), (37, 512), (100, 128)]:
        x = torch.arange(n_in, dtype=torch.float32)[None, None, None]
        expected = F.interpolate(x, size=(1, n_out), mode="nearest")[0, 0, 0].long()
        assert nearest_indices(n_in, n_out, "torch").tolist() == expected.tolist()


def test_nearest_cv2_rule_reference_values():
    # measured with OpenCV 5.0 (cv2.resize INTER_NEAREST of arange(6) to 34): index 17 -> 2,
    # where exact arithmetic and torch give 3
    assert nearest_indices(6, 34, "cv2")[17] == 2
    assert nearest_indices(6, 34, "torch")[17] == 3
    assert nearest_indices(4, 8, "cv2").tolist() == [0, 0, 1, 1, 2, 2, 3, 3]


# --- decoding ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("shape", "axis"), [((5, 6, 9), 0), ((9, 4, 9), 1), ((6, 9, 2), 2)])
def test_encode_decode_round_trip_without_lossy_resize(shape, axis):
    label = np.random.default_rng(2).integers(0, 1000, shape)
    geometry = plan(shape, size=9, axis=axis, exact_padding=True)
    assert geometry.padded == (9, 9)
    encoded = resample_label(label, geometry)
    assert encoded.shape == (shape[axis], 9, 9)
    assert np.array_equal(decode_slices(encoded.numpy(), geometry), label)
    assert torch.equal(decode_slices(encoded, geometry), torch.from_numpy(label))


def test_decode_from_low_resolution_with_leading_dims():
    geometry = plan((3, 20, 40), size=16, exact_padding=True)
    masks = torch.zeros(2, 3, 4, 4)
    masks[1, :, :2] = 1  # top half of the square, which holds rows -10..29 of the slice
    out = decode_slices(masks, geometry)
    assert out.shape == (2, 3, 20, 40)
    assert out[0].sum() == 0
    assert (out[1, :, :10] == 1).all() and (out[1, :, 10:] == 0).all()


def test_decode_checks_the_slice_count():
    with pytest.raises(ValueError, match="slices"):
        decode_slices(torch.zeros(4, 8, 8), plan((3, 8, 8), 8))


def test_plan_rejects_bad_arguments():
    with pytest.raises(ValueError, match="axis"):
        plan((3, 8, 8), 8, axis=3)
    with pytest.raises(ValueError, match="size"):
        plan((3, 8, 8), 0)
