"""SegVol's zoom-out-zoom-in on the tiny network: windows, fallbacks, prompt kinds."""

from __future__ import annotations

import math

import pytest
import torch

from data_tools.tiny_clip import write_tiny_clip
from segfm.inference.zoom import ClassPrompts, ZoomOptions, zoom_out_zoom_in
from segfm.models.segvol import SegVol, segvol_tiny

ROI = (16, 32, 32)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> SegVol:
    clip_dir = write_tiny_clip(tmp_path_factory.mktemp("clip") / "clip")
    torch.manual_seed(0)
    return segvol_tiny(clip_dir=str(clip_dir), roi_size=ROI).eval()


class _Constant:
    """Wraps a network's decode to return a fixed logit (a stand-in for a trained decoder)."""

    def __init__(self, model, value: float) -> None:
        self.model, self.value, self.encodes = model, value, 0
        self.roi_size = model.roi_size
        self.postprocess = model.postprocess

    def encode(self, image):
        self.encodes += image.shape[0] > 0
        return self.model.encode(image)

    def decode(self, emb, text=None, points=None, boxes=None):
        low = self.model.decode(emb, text, points, boxes)
        return torch.full_like(low, self.value)


def test_zoom_in_covers_the_foreground_with_windows(model: SegVol) -> None:
    image = torch.rand(1, 48, 96, 96)
    text = model.embed_text(["liver"])[0]
    everywhere = _Constant(model, 5.0)
    logits = zoom_out_zoom_in(everywhere, image, [ClassPrompts(text)], ZoomOptions(sw_batch_size=8))
    assert logits.shape == (1, 48, 96, 96)
    # global pass + windows of 16x32x32 at half overlap over the whole volume: 5 x 5 x 5 = 125
    assert everywhere.encodes == 1 + math.ceil(125 / 8)
    torch.testing.assert_close(logits, torch.full_like(logits, 5.0))
    nowhere = _Constant(model, -5.0)
    zoom_out_zoom_in(nowhere, image, [ClassPrompts(text)])
    assert nowhere.encodes == 1  # nothing found: no zoom-in


def test_zoom_in_box_mode_without_text_keeps_global_logits_where_no_box(model: SegVol) -> None:
    image = torch.rand(1, 24, 48, 48)
    box = torch.tensor([0.0, 0, 0, 23, 47, 47])
    logits = zoom_out_zoom_in(model, image, [ClassPrompts(box=box)], ZoomOptions(zoom_in=True))
    assert logits.shape == (1, 24, 48, 48) and torch.isfinite(logits).all()


class _Counting:
    """Counts the windows a network encodes."""

    def __init__(self, model) -> None:
        self.model, self.windows = model, 0
        self.roi_size, self.postprocess, self.decode = (
            model.roi_size,
            model.postprocess,
            model.decode,
        )

    def encode(self, image):
        self.windows += image.shape[0]
        return self.model.encode(image)


def test_a_cache_encodes_each_window_once_and_changes_nothing(model: SegVol) -> None:
    image = torch.rand(1, 24, 48, 48)
    box = torch.tensor([4.0, 6, 8, 18, 40, 36])
    clicks = (torch.tensor([[10.0, 20, 20], [12.0, 30, 12]]), torch.tensor([1.0, 0.0]))
    counting = _Counting(model)
    cache: dict = {}
    cached = [
        zoom_out_zoom_in(counting, image, [ClassPrompts(box=box)], cache=cache),
    ]
    first = counting.windows
    cached.append(
        zoom_out_zoom_in(counting, image, [ClassPrompts(box=box, points=clicks)], cache=cache)
    )
    assert first > 1 and counting.windows == first  # zoom-in ran; the click encoded nothing
    reference = [
        zoom_out_zoom_in(model, image, [ClassPrompts(box=box)]),
        zoom_out_zoom_in(model, image, [ClassPrompts(box=box, points=clicks)]),
    ]
    for got, expected in zip(cached, reference, strict=True):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert ("global",) in cache and len(cache) == first


def test_cache_keys_are_plain_data(model: SegVol, tmp_path) -> None:
    """The keys save and load with weights_only (the challenge keeps them between processes)."""
    cache: dict = {}
    box = torch.tensor([4.0, 6, 8, 18, 40, 36])
    zoom_out_zoom_in(
        _Constant(model, 5.0), torch.rand(1, 24, 48, 48), [ClassPrompts(box=box)], cache=cache
    )
    torch.save(cache, tmp_path / "cache.pt")
    loaded = torch.load(tmp_path / "cache.pt", weights_only=True)
    assert loaded.keys() == cache.keys() and len(cache) > 1
