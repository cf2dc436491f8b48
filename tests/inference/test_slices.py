"""Slice propagation and click refinement with a stand-in network and the tiny SAM."""

import torch
from torch import nn

from segfm.inference.cache import EmbeddingCache
from segfm.inference.slices import (
    SlicePropagation,
    decode_slices,
    encode_slices,
    propagate,
    refine_slices,
)
from segfm.models import build_sam
from segfm.prompts import volume_boxes

OPTIONS = SlicePropagation(encode_batch_size=4)


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


def test_slice_propagation_follows_moving_objects():
    depth, size = 12, 32
    volume = torch.zeros(depth, size, size)
    label = torch.zeros(depth, size, size, dtype=torch.long)
    for z in range(depth):  # object 1 drifts right by 1 px per slice, object 2 sits still
        label[z, 4:10, 2 + z : 8 + z] = 1
        if 3 <= z <= 8:
            label[z, 20:28, 20:28] = 2
    volume[label > 0] = 1.0
    volume[0, 0, 0] = 0.2  # keep per-slice min-max stable
    seg = propagate(BrightInBox(), volume, volume_boxes(label, [1, 2]), EmbeddingCache(), OPTIONS)
    assert torch.equal(seg, label)


def test_propagation_stays_inside_the_class_slice_range():
    volume = torch.zeros(8, 32, 32)
    volume[:, 10:20, 10:20] = 1.0  # bright on every slice
    volume[:, 0, 0] = 0.2
    label = torch.zeros(8, 32, 32, dtype=torch.long)
    label[2:5, 10:20, 10:20] = 1
    seg = propagate(BrightInBox(), volume, volume_boxes(label, [1]), EmbeddingCache(), OPTIONS)
    assert torch.equal(seg, label)


def test_propagation_under_bf16_autocast():
    # `segfm test --trainer.precision bf16-mixed`: the real tiny network decodes in bf16, the
    # probability maps stay float32, and the result is close to the fp32 one
    torch.manual_seed(0)
    network = build_sam("tiny", image_size=32)
    volume = torch.rand(5, 32, 32)
    label = torch.zeros(5, 32, 32, dtype=torch.long)
    label[1:4, 6:20, 8:24] = 1
    boxes = volume_boxes(label, [1])
    with torch.no_grad():
        emb = encode_slices(network, volume, [2], EmbeddingCache(), 4)[2]
        probs_fp32 = decode_slices(network, emb, None, (32, 32))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            seg = propagate(network, volume, boxes, EmbeddingCache(), OPTIONS)
            emb = encode_slices(network, volume, [2], EmbeddingCache(), 4)[2]
            probs = decode_slices(network, emb, None, (32, 32))
    assert seg.shape == label.shape and seg.dtype == torch.long
    assert probs.dtype == torch.float32
    assert (probs - probs_fp32).abs().max() < 0.05


def test_clicks_change_only_their_slices():
    network = build_sam("tiny", image_size=32)
    volume = torch.rand(6, 32, 32)
    previous = torch.zeros(6, 32, 32, dtype=torch.long)
    previous[1:5, 8:20, 8:20] = 3
    clicks = {3: [((2, 14, 14), 1), ((2, 9, 9), 0), ((4, 10, 10), 0)]}
    seg = refine_slices(
        network, volume, previous.clone(), clicks, {3: None}, EmbeddingCache(), OPTIONS
    )
    assert seg.shape == previous.shape
    for z in (0, 1, 3, 5):  # slices without clicks keep the previous prediction
        assert torch.equal(seg[z], previous[z])
    assert set(seg.unique().tolist()) <= {0, 3}


def test_the_cache_encodes_each_slice_of_a_volume_once():
    network = BrightInBox()
    encoded = []
    encode = network.encode

    def spy(x):
        encoded.append(x.shape[0])
        return encode(x)

    network.encode = spy
    cache = EmbeddingCache()
    volume = torch.rand(6, 32, 32)
    encode_slices(network, volume, [1, 2, 3, 4], cache, 3)
    assert encoded == [3, 1]  # in batches of 3
    encode_slices(network, volume, [3, 0], cache, 3)
    assert encoded == [3, 1, 1]  # slice 0 is new
    encode_slices(network, volume.clone(), [3], cache, 3)
    assert encoded == [3, 1, 1, 1]  # another volume
