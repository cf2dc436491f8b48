import numpy as np
import torch

from segfm.prompts import expand_boxes, jitter_boxes, masks_to_boxes, volume_boxes


def test_masks_to_boxes_known():
    m = torch.zeros(2, 10, 12, dtype=torch.bool)
    m[0, 2:5, 3:9] = True
    boxes = masks_to_boxes(m)
    assert boxes[0].tolist() == [3.0, 2.0, 8.0, 4.0]
    assert boxes[1].tolist() == [0.0, 0.0, 11.0, 9.0]  # empty mask: whole image


def test_jitter_pushes_outwards_within_bounds():
    boxes = torch.tensor([[10.0, 10.0, 20.0, 20.0], [0.0, 0.0, 31.0, 31.0]])
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        out = jitter_boxes(boxes, 5, (32, 32), g)
        assert (out[:, :2] <= boxes[:, :2]).all() and (out[:, 2:] >= boxes[:, 2:]).all()
        assert (out[0, :2] >= 5).all() and (out[0, 2:] <= 25).all()
        assert out.min() >= 0 and out.max() <= 32
    a = jitter_boxes(boxes, 5, (32, 32), torch.Generator().manual_seed(1))
    b = jitter_boxes(boxes, 5, (32, 32), torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert torch.equal(jitter_boxes(boxes, 0, (32, 32)), boxes)


def test_expand_boxes_clamped():
    out = expand_boxes(torch.tensor([[1.0, 1.0, 5.0, 5.0]]), 3, (8, 8))
    assert out.tolist() == [[0.0, 0.0, 7.0, 7.0]]


def test_volume_boxes_middle_slice_contains_class():
    label = torch.zeros(9, 16, 16, dtype=torch.long)
    label[1:3, 4:8, 5:9] = 1
    label[6:8, 2:6, 3:7] = 1  # a gap in z: slices 1, 2, 6, 7
    label[4, 0:2, 0:3] = 2
    boxes = volume_boxes(label, [1, 2, 3])
    assert set(boxes) == {1, 2}
    b = boxes[1]
    assert (b["z_min"], b["z_max"]) == (1, 7)
    assert b["z_mid"] == 6 and label[b["z_mid"]].eq(1).any()  # upper middle of 1, 2, 6, 7
    assert boxes[2] == {
        "z_min": 4,
        "z_max": 4,
        "z_mid": 4,
        "z_mid_x_min": 0,
        "z_mid_y_min": 0,
        "z_mid_x_max": 2,
        "z_mid_y_max": 1,
    }


# --- the challenge's get_boxes.py: upper middle slice, random margin scaled by size / 256 -----


def _draws(seed: int, n: int) -> list[int]:
    rng = np.random.RandomState(seed)
    return [int(rng.randint(0, 6, 1)[0]) for _ in range(n)]


def test_volume_boxes_upper_middle_of_an_even_slice_count():
    label = torch.zeros(10, 8, 8, dtype=torch.long)
    label[2:6, 1:3, 1:3] = 1  # slices 2, 3, 4, 5: z_indices[4 // 2] = 4 (not 3)
    label[4, 5:7, 5:7] = 1  # a wider part on slice 4 only: the 2D box must come from slice 4
    b = volume_boxes(label, [1], margin=False)[1]
    assert (b["z_min"], b["z_mid"], b["z_max"]) == (2, 4, 5)
    assert (b["z_mid_x_min"], b["z_mid_y_min"], b["z_mid_x_max"], b["z_mid_y_max"]) == (1, 1, 6, 6)


def test_volume_boxes_margin_scales_with_the_slice_size():
    # seed 1 draws 5 first: int(5 * 512 / 256) = 10 px in x, int(5 * 256 / 256) = 5 px in y
    assert _draws(1, 1) == [5]
    label = torch.zeros(3, 256, 512, dtype=torch.long)
    label[1, 100:120, 200:240] = 1
    b = volume_boxes(label, [1], seed=1)[1]
    assert (b["z_mid_x_min"], b["z_mid_x_max"]) == (190, 249)
    assert (b["z_mid_y_min"], b["z_mid_y_max"]) == (95, 124)
    assert (b["z_min"], b["z_mid"], b["z_max"]) == (1, 1, 1)  # z stays tight
    # a 300 x 100 slice: int(5 * 300 / 256) = 5 in x, int(5 * 100 / 256) = 1 in y
    small = torch.zeros(1, 100, 300, dtype=torch.long)
    small[0, 40:50, 100:150] = 1
    b = volume_boxes(small, [1], seed=1)[1]
    assert (b["z_mid_x_min"], b["z_mid_y_min"], b["z_mid_x_max"], b["z_mid_y_max"]) == (
        95,
        39,
        154,
        50,
    )
    # margin=False: the tight box
    b = volume_boxes(small, [1], margin=False)[1]
    assert (b["z_mid_x_min"], b["z_mid_y_min"], b["z_mid_x_max"], b["z_mid_y_max"]) == (
        100,
        40,
        149,
        49,
    )


def test_volume_boxes_margin_is_clipped_to_the_slice():
    assert _draws(1, 1) == [5]  # 10 px in x and y on a 512 x 512 slice
    label = torch.zeros(1, 512, 512, dtype=torch.long)
    label[0, 0:30, 505:512] = 1  # touches the top and right borders
    b = volume_boxes(label, [1], seed=1)[1]
    assert (b["z_mid_x_min"], b["z_mid_y_min"], b["z_mid_x_max"], b["z_mid_y_max"]) == (
        495,
        0,
        511,
        39,
    )


def test_volume_boxes_one_draw_per_class_in_sorted_order_default_seed_2025():
    # seed 2025 draws 2, 4, 0: classes 1, 3, 7 in sorted order (absent class 5 draws nothing);
    # on a 512 x 512 slice the margins are 4, 8 and 0 px
    assert _draws(2025, 3) == [2, 4, 0]
    label = torch.zeros(1, 512, 512, dtype=torch.long)
    for c, x in ((7, 300), (3, 200), (1, 100)):
        label[0, 50:60, x : x + 10] = c
    boxes = volume_boxes(label, [7, 5, 3, 1])
    assert set(boxes) == {1, 3, 7}
    widths = {c: (b["z_mid_x_min"], b["z_mid_x_max"]) for c, b in boxes.items()}
    assert widths == {1: (96, 113), 3: (192, 217), 7: (300, 309)}
    assert volume_boxes(label, [1, 3, 7]) == boxes  # one generator per call: reproducible
