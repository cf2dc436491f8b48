"""BiomedParse method: loss on hand-built cases, instances, prompt sampling, options."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from segfm.inference.volume25d import SliceOptions, upsample
from segfm.methods.biomedparse import (
    BiomedParse,
    BiomedParseLoss,
    draw_classes,
    edge_target,
    split_instances,
)
from segfm.models.biomedparse import BiomedParseOutput
from segfm.sample import ClassInfo


@pytest.fixture
def method() -> BiomedParse:
    loss = BiomedParseLoss(num_prompts=4, edge_coeff=1.0)
    return BiomedParse(arch="tiny", image_size=64, loss=loss)


def _keys(x: float, a: float = -0.5) -> float:
    """Keys' cubic kernel with PIL's ``a = -0.5``."""
    x = abs(x)
    if x < 1:
        return ((a + 2) * x - (a + 3)) * x * x + 1
    return (((x - 5) * x + 8) * x - 4) * a if x < 2 else 0.0


def _pil_bicubic(n_in: int, n_out: int) -> np.ndarray:
    """Resampling matrix ``[n_out, n_in]`` of PIL's bicubic filter (what antialias=True runs)."""
    scale = n_in / n_out
    support, stretch = 2.0 * max(scale, 1.0), 1 / max(scale, 1.0)
    out = np.zeros((n_out, n_in))
    for i in range(n_out):
        centre = scale * (i + 0.5)
        lo, hi = max(int(centre - support + 0.5), 0), min(int(centre + support + 0.5), n_in)
        w = np.array([_keys((j - centre + 0.5) * stretch) for j in range(lo, hi)])
        out[i, lo:hi] = w / w.sum()  # weights renormalised where the window leaves the image
    return out


def _hand_upsample(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    rows, cols = _pil_bicubic(x.shape[-2], size[0]), _pil_bicubic(x.shape[-1], size[1])
    out = np.einsum("ij,ncjk,lk->ncil", rows, x.double().numpy(), cols)
    return torch.from_numpy(out).float()


def test_upsample_is_the_antialiased_bicubic_of_the_original() -> None:
    x = torch.randn(2, 1, 4, 5, generator=torch.Generator().manual_seed(0))
    expected = _hand_upsample(x, (16, 12))
    torch.testing.assert_close(upsample(x, (16, 12)), expected, atol=1e-5, rtol=0)
    plain = torch.nn.functional.interpolate(x, size=(16, 12), mode="bicubic")
    assert (plain - expected).abs().max() > 0.05  # the plain bicubic is another kernel
    assert torch.equal(upsample(x, (4, 5)), x)  # same size: untouched, as the original


def test_draw_classes_distinct_when_enough() -> None:
    rng = random.Random(0)
    for _ in range(200):
        picks = draw_classes([1, 2, 3, 4, 5], 4, False, rng)
        assert len(set(picks)) == 4 and set(picks) <= {1, 2, 3, 4, 5}
        assert sorted(draw_classes([1, 2, 3, 4], 4, False, rng)) == [1, 2, 3, 4]
    few = [draw_classes([1, 2, 3], 4, False, rng) for _ in range(50)]
    assert all(len(p) == 4 and set(p) <= {1, 2, 3} for p in few)  # replacement: repeats
    assert draw_classes([7, 9], 4, True, rng) == [7, 7, 7, 7]


def test_edge_target_is_morphological_gradient() -> None:
    label = torch.zeros(1, 1, 7, 7, dtype=torch.long)
    label[0, 0, 2:5, 2:5] = 1
    expected = torch.zeros(7, 7)
    expected[1:6, 1:6] = 1
    expected[3, 3] = 0  # the inside of a 3x3 square
    assert torch.equal(edge_target(label)[0, 0], expected)
    inst = torch.zeros(1, 1, 4, 6, dtype=torch.long)
    inst[..., :3], inst[..., 3:] = 1, 2  # touching instances: edge between them, not at borders
    assert edge_target(inst)[0, 0].tolist() == [[0, 0, 1, 1, 0, 0]] * 4


def test_loss_terms_weighting(method: BiomedParse) -> None:
    maps = torch.zeros(2, 1, 16, 16, dtype=torch.long)
    maps[0, 0, 4:10, 4:10] = 1  # present; the second target is empty
    masks = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    edges = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    existence = torch.tensor([[0.3], [-0.2]])
    terms = method.loss_terms(masks, edges, existence, maps)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    cls = bce(
        existence.flatten(),
        torch.tensor([1.0, 0.0]),
        pos_weight=torch.tensor(3.0),
        reduction="none",
    )
    up, eup = _hand_upsample(masks, (16, 16)), _hand_upsample(edges, (16, 16))
    target, edge_t = (maps > 0).float(), edge_target(maps)
    seg0 = method.seg_loss(up[:1], target[:1])[0]
    edge0 = method.seg_loss(eup[:1], edge_t[:1])[0]
    expected = (cls[0] + seg0 + edge0 + cls[1]) / 2  # the empty target: existence loss only
    torch.testing.assert_close(terms["loss"], expected, atol=1e-5, rtol=1e-5)
    # changing the mask logits of the empty target changes nothing
    masks2 = masks.clone()
    masks2[1] += 5
    again = method.loss_terms(masks2, edges, existence, maps)["loss"]
    torch.testing.assert_close(again, terms["loss"])
    # seg loss itself: perfect logits give ~0 Dice + small BCE
    perfect = (target * 2 - 1) * 50
    assert method.seg_loss(perfect[:1], target[:1]).item() < 1e-3


def test_split_instances_six_connected() -> None:
    seg = torch.zeros(3, 5, 5, dtype=torch.long)
    seg[0, 0, 0] = 1
    seg[1, 1, 1] = 1  # diagonal neighbour only: separate under 6-connectivity
    seg[2, 3:5, 3:5] = 1
    out = split_instances(seg)
    assert out.max() == 3 and len(out.unique()) == 4


def test_sample_prompts_semantic_and_instance(method: BiomedParse) -> None:
    label = torch.zeros(1, 8, 8, dtype=torch.long)
    label[0, :4] = 2
    classes = {1: ClassInfo("liver", ("Liver",)), 2: ClassInfo("spleen", ("Spleen", "Spleen CT"))}
    texts, maps = method.sample_prompts(label, classes, False, random.Random(0))
    assert len(texts) == 4 and maps.shape == (4, 1, 8, 8)
    for t, m in zip(texts, maps, strict=True):
        assert (m.sum() > 0) == t.startswith("Spleen")  # absent liver: an empty target
    inst = torch.zeros(1, 8, 8, dtype=torch.long)
    inst[0, 0, 0], inst[0, 5, 5] = 3, 300  # ids above 255 kept
    texts, maps = method.sample_prompts(
        inst, {1: ClassInfo("lesion", ("Lesion",))}, True, random.Random(0)
    )
    assert texts == ["Lesion"] * 4 and int(maps.max()) == 300


def test_segment_volume_instances_and_nms(
    method: BiomedParse, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fake_decode(features, text, counts, generator=None):
        n = len(counts)
        p = counts[0]
        masks = torch.full((n * p, 1, 16, 16), -20.0)
        masks[:, :, 2:5, 2:5] = 20.0  # two separate blobs on every slice
        masks[:, :, 10:14, 10:14] = 20.0
        return BiomedParseOutput(masks, None, torch.full((n * p, 1), 5.0))

    monkeypatch.setattr(method.model, "decode", fake_decode)
    image = torch.rand(6, 40, 40) * 255
    seg = method.segment_volume(image, {5: "Lesion"}, instance=True)
    assert seg.shape == (6, 40, 40)
    assert sorted(seg.unique().tolist()) == [0, 1, 2]
    semantic = method.segment_volume(image, {5: "Lesion"}, instance=False)
    assert sorted(semantic.unique().tolist()) == [0, 5]
    # two prompts with identical masks and equal existence: NMS keeps only the first by order
    both = method.segment_volume(image, {2: "a", 5: "b"}, instance=False)
    assert sorted(both.unique().tolist()) == [0, 2]
    # the text protocol's interface splits instances where the case's metadata says so
    spacing = [1.0, 1.0, 1.0]
    assert torch.equal(method.segment_text(image, spacing, {5: "Lesion"}, {"instance": True}), seg)
    assert torch.equal(method.segment_text(image, spacing, {5: "Lesion"}, {}), semantic)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="num_prompts"):
        BiomedParse(arch="tiny", loss=BiomedParseLoss(num_prompts=0))
    with pytest.raises(ValueError, match="edge_coeff"):
        BiomedParseLoss(edge_coeff=-1.0)
    with pytest.raises(ValueError, match="slice_batch_size"):
        SliceOptions(slice_batch_size=0)
    with pytest.raises(ValueError, match="nms_iou"):
        SliceOptions(nms_iou=0.0)
    with pytest.raises(ValueError, match="existence_threshold"):
        SliceOptions(existence_threshold=1.0)
    with pytest.raises(ValueError, match="clip_dir"):
        BiomedParse(arch="v2")
    with pytest.raises(ValueError, match="multiple of 32"):
        BiomedParse(arch="tiny", image_size=100)


def test_native_protocol_is_the_text_protocol() -> None:
    assert BiomedParse(arch="tiny", image_size=64, protocol="native").test_protocol.name == "text"
    assert BiomedParse(arch="tiny", image_size=64).test_protocol.name == "text"
