import pytest
import torch

from segfm.evaluation.interactive import ClassPrompt
from segfm.inference.slices import SlicePropagation, propagate
from segfm.methods import MedSAM
from segfm.methods.medsam import BoxPrompts
from segfm.prompts import volume_boxes


@pytest.fixture
def method():
    return MedSAM(
        arch="tiny",
        image_size=32,
        train_prompts=BoxPrompts(box_shift=2, targets_per_image=2),
        inference=SlicePropagation(encode_batch_size=4),
    )


def test_frozen_prompt_encoder_and_param_groups(method):
    assert not any(p.requires_grad for p in method.model.prompt_encoder.parameters())
    params = {id(p) for g in method.parameter_groups() for p in g["params"]}
    assert params == {id(p) for p in method.model.parameters() if p.requires_grad}
    opt = method.configure_optimizers()
    assert opt.defaults["lr"] == 1e-4 and opt.defaults["weight_decay"] == 0.01


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: BoxPrompts(box_shift=-1), "box_shift"),
        (lambda: BoxPrompts(targets_per_image=0), "targets_per_image"),
        (lambda: SlicePropagation(mask_threshold=1.5), "mask_threshold"),
    ],
)
def test_bad_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_options_are_typed_and_saved_as_plain_values(method):
    assert method.train_prompts.box_shift == 2 and method.inference.encode_batch_size == 4
    assert method.hparams["train_prompts"] == {"box_shift": 2, "targets_per_image": 2}
    assert method.hparams["evaluation"]["nsd_tolerance"] == 2.0


def test_native_protocol_is_the_box_alone(method):
    assert (method.test_protocol.name, method.test_protocol.clicks) == ("interactive", 0)
    assert method.test_protocol.box


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
    assert 0.0 <= float(method.train_metrics["train_dice"].compute()) <= 1.0


def test_interactive_clicks_change_only_their_slices(method):
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
    volume = torch.rand(6, 32, 32)
    label = torch.zeros(6, 32, 32, dtype=torch.long)
    label[1:5, 8:20, 8:20] = 2
    boxes = volume_boxes(label, [2])
    direct = propagate(method.model, volume, boxes, method._cache, method.inference)
    seg = method.segment_interactive(volume, [1.0] * 3, {2: ClassPrompt(box=boxes[2])}, None)
    assert torch.equal(seg, direct)


def test_interactive_steps_encode_each_slice_of_a_volume_once(method):
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


def test_box_protocol_scores_slice_propagation(method, tmp_path):
    # MedSAM's own test through the harness: the DSC of slice propagation from the boxes
    from segfm.evaluation.harness import ProtocolHarness
    from segfm.evaluation.metrics import dice

    torch.manual_seed(0)
    volume = torch.rand(6, 32, 32)
    label = torch.zeros(6, 32, 32, dtype=torch.long)
    label[1:5, 8:20, 8:20] = 1
    label[2:4, 22:30, 4:12] = 2
    volume[label > 0] += 1.0
    p = method.test_protocol
    harness = ProtocolHarness(
        p.name, tmp_path, num_clicks=p.clicks, box=p.box, save_predictions=False
    )
    batch = {
        "image": volume[None, None],
        "label": label[None, None],
        "spacing": torch.tensor([[1.0, 1.0, 1.0]]),
        "meta": [{"case_id": "a"}],
    }
    (scores,) = harness.run_batch(batch, method.segment_interactive)
    seg = propagate(
        method.model, volume, volume_boxes(label, [1, 2]), method._cache, method.inference
    )
    expected = (dice(seg == 1, label == 1) + dice(seg == 2, label == 2)) / 2
    assert scores["dsc"] == pytest.approx(expected)
    assert [r["prompt"] for r in harness.steps.rows] == ["box"]


@pytest.mark.parametrize("boxes_from_mask", [None, True, False])
def test_evaluation_boxes_from_mask_reaches_the_harness(boxes_from_mask):
    from segfm.evaluation.options import Evaluation

    method = MedSAM(
        arch="tiny", image_size=32, evaluation=Evaluation(boxes_from_mask=boxes_from_mask)
    )
    harness = method._make_harness(save_predictions=False, num_overlays=0)
    assert harness.boxes_from_mask is boxes_from_mask
