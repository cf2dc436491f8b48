import pytest
import torch
from torch import nn

from segfm.methods import MedSAM
from segfm.prompts import volume_boxes


@pytest.fixture
def method():
    return MedSAM(arch="tiny", image_size=32, box_shift=2, targets_per_image=2, encode_batch_size=4)


def test_frozen_prompt_encoder_and_param_groups(method):
    assert not any(p.requires_grad for p in method.model.prompt_encoder.parameters())
    params = {id(p) for g in method.parameter_groups() for p in g["params"]}
    assert params == {id(p) for p in method.model.parameters() if p.requires_grad}
    opt = method.configure_optimizers()
    assert opt.defaults["lr"] == 1e-4 and opt.defaults["weight_decay"] == 0.01


@pytest.mark.parametrize(
    "bad", [{"box_shift": -1}, {"targets_per_image": 0}, {"mask_threshold": 1.5}]
)
def test_bad_arguments(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        MedSAM(arch="tiny", image_size=32, **bad)


def test_sample_targets_boxes_enclose_targets(method):
    label = torch.zeros(3, 32, 32, dtype=torch.long)
    label[0, 4:10, 5:12] = 1
    label[0, 20:30, 20:25] = 3
    label[0, 1:3, 28:31] = 4
    label[2, 10:20, 10:20] = 2  # image 1 has no label and gets no target
    g = torch.Generator().manual_seed(0)
    targets, boxes, index = method.sample_targets(label, g)
    assert index.tolist() == [0, 0, 2]
    for t, b, i in zip(targets, boxes, index, strict=True):
        ys, xs = torch.nonzero(t, as_tuple=True)
        assert t.sum() > 0 and (label[i][t.bool()] == label[i][ys[0], xs[0]]).all()
        assert b[0] <= xs.min() and b[1] <= ys.min() and b[2] >= xs.max() and b[3] >= ys.max()
        assert b[0] >= xs.min() - 2 and b[2] <= xs.max() + 2  # pushed out by at most box_shift


def test_training_step_learns_shape(method):
    batch = {
        "image": torch.rand(2, 3, 32, 32),
        "label": torch.zeros(2, 1, 32, 32, dtype=torch.long),
    }
    batch["label"][:, 0, 8:20, 8:24] = 1
    loss = method.training_step(batch, 0)
    loss.backward()
    assert torch.isfinite(loss)
    assert method.model.mask_decoder.output_hypernetworks_mlps[0].layers[0].weight.grad is not None
    assert all(p.grad is None for p in method.model.prompt_encoder.parameters())


class BrightInBox(nn.Module):
    """Stand-in SAM: the bright pixels inside the box (exact when the box holds the object)."""

    image_size = 32

    def encode(self, images):
        return images

    def decode(self, embeddings, boxes=None, multimask_output=False, **_):
        n, _, s, _ = embeddings.shape
        ys, xs = torch.meshgrid(torch.arange(s), torch.arange(s), indexing="ij")
        inside = torch.stack(
            [
                (xs >= b[0].floor())
                & (xs <= b[2].ceil())
                & (ys >= b[1].floor())
                & (ys <= b[3].ceil())
                for b in boxes
            ]
        )
        logits = torch.where(inside & (embeddings[:, 0] > 0.5), 10.0, -10.0)[:, None]
        return logits, torch.zeros(n, 1)


def test_slice_propagation_follows_moving_objects(method):
    depth, size = 12, 32
    volume = torch.zeros(depth, size, size)
    label = torch.zeros(depth, size, size, dtype=torch.long)
    for z in range(depth):  # object 1 drifts right by 1 px per slice, object 2 sits still
        label[z, 4:10, 2 + z : 8 + z] = 1
        if 3 <= z <= 8:
            label[z, 20:28, 20:28] = 2
    volume[label > 0] = 1.0
    volume[0, 0, 0] = 0.2  # keep per-slice min-max stable
    method.model = BrightInBox()
    boxes = volume_boxes(label, [1, 2])
    seg = method.segment_volume(volume, boxes)
    assert torch.equal(seg, label)


def test_propagation_stays_inside_the_class_slice_range(method):
    volume = torch.zeros(8, 32, 32)
    volume[:, 10:20, 10:20] = 1.0  # bright on every slice
    volume[:, 0, 0] = 0.2
    label = torch.zeros(8, 32, 32, dtype=torch.long)
    label[2:5, 10:20, 10:20] = 1
    method.model = BrightInBox()
    seg = method.segment_volume(volume, volume_boxes(label, [1]))
    assert torch.equal(seg, label)


def test_segment_volume_under_bf16_autocast(method):
    # `segfm test --trainer.precision bf16-mixed`: the real tiny network decodes in bf16, the
    # probability maps stay float32, and the result is close to the fp32 one
    torch.manual_seed(0)
    volume = torch.rand(5, 32, 32)
    label = torch.zeros(5, 32, 32, dtype=torch.long)
    label[1:4, 6:20, 8:24] = 1
    boxes = volume_boxes(label, [1])
    probs_fp32 = method._decode_slices(method._encode_slices(volume, [2])[2], None, (32, 32))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        seg = method.segment_volume(volume, boxes)
        method._slice_cache = None
        probs = method._decode_slices(method._encode_slices(volume, [2])[2], None, (32, 32))
    assert seg.shape == label.shape and seg.dtype == torch.long
    assert probs.dtype == torch.float32
    assert (probs - probs_fp32).abs().max() < 0.05


def test_interactive_clicks_change_only_their_slices(method):
    from segfm.evaluation.interactive import ClassPrompt

    volume = torch.rand(6, 32, 32)
    previous = torch.zeros(6, 32, 32, dtype=torch.long)
    previous[1:5, 8:20, 8:20] = 3
    prompt = ClassPrompt(fg=[(2, 14, 14)], bg=[(2, 9, 9), (4, 10, 10)])
    seg = method.segment_interactive(volume, [1.0, 1.0, 1.0], {3: prompt}, previous)
    assert seg.shape == previous.shape
    for z in (0, 1, 3, 5):  # slices without clicks keep the previous prediction
        assert torch.equal(seg[z], previous[z])
    assert set(seg.unique().tolist()) <= {0, 3}


def test_interactive_box_step_is_slice_propagation(method):
    from segfm.evaluation.interactive import ClassPrompt

    volume = torch.rand(6, 32, 32)
    label = torch.zeros(6, 32, 32, dtype=torch.long)
    label[1:5, 8:20, 8:20] = 2
    boxes = volume_boxes(label, [2])
    direct = method.segment_volume(volume, boxes)
    seg = method.segment_interactive(volume, [1.0] * 3, {2: ClassPrompt(box=boxes[2])}, None)
    assert torch.equal(seg, direct)


def test_interactive_steps_encode_each_slice_of_a_volume_once(method):
    from segfm.evaluation.interactive import ClassPrompt

    encoded = []
    encode = method.model.encode

    def spy(x):
        encoded.append(x.shape[0])
        return encode(x)

    method.model.encode = spy
    volume = torch.rand(6, 32, 32)
    label = torch.zeros(6, 32, 32, dtype=torch.long)
    label[1:5, 8:20, 8:20] = 2
    prompt = ClassPrompt(box=volume_boxes(label, [2])[2])
    first = method.segment_interactive(volume, [1.0] * 3, {2: prompt}, None)
    assert sum(encoded) == 4  # slices 1..4
    prompt.fg.append((3, 12, 12))
    method.segment_interactive(volume, [1.0] * 3, {2: prompt}, first)
    assert sum(encoded) == 4  # slice 3 was encoded already
    prompt.bg.append((0, 2, 2))
    method.segment_interactive(volume, [1.0] * 3, {2: prompt}, first)
    assert sum(encoded) == 5  # slice 0 is new
