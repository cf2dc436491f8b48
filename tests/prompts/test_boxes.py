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
    assert b["z_mid"] in (2, 6) and label[b["z_mid"]].eq(1).any()
    assert boxes[2] == {
        "z_min": 4,
        "z_max": 4,
        "z_mid": 4,
        "z_mid_x_min": 0,
        "z_mid_y_min": 0,
        "z_mid_x_max": 2,
        "z_mid_y_max": 1,
    }
