"""The session: undo, a box restarting the target, a segment to continue from, text, intensity."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from data_tools.tiny_clip import write_tiny_clip
from segfm.evaluation.interactive import ClassPrompt
from segfm.methods import MedSAM, SAMMed3D, SegVol
from segfm.serve.errors import RequestError
from segfm.serve.session import Session
from segfm.transforms.intensity import window_ct


def _volume() -> np.ndarray:
    z, y, x = np.meshgrid(np.arange(16), np.arange(32), np.arange(32), indexing="ij")
    inside = ((z - 8) / 5) ** 2 + ((y - 15) / 9) ** 2 + ((x - 16) / 8) ** 2 <= 1
    noise = np.random.default_rng(1).normal(0, 15, inside.shape)
    return (noise - 200 + 260 * inside).astype(np.int16)


def _sam_med3d() -> SAMMed3D:
    torch.manual_seed(0)
    return SAMMed3D(arch="tiny", image_size=32).eval()


def test_undo_restores_the_mask_and_the_methods_state() -> None:
    session = Session(_sam_med3d())
    session.set_image(_volume())
    with pytest.raises(RequestError, match="nothing to undo"):
        session.undo()
    session.add_point([8, 15, 16], True)
    after_two = session.add_point([8, 10, 22], False).copy()
    after_three = session.add_point([5, 18, 12], True).copy()
    assert not np.array_equal(after_two, after_three)
    np.testing.assert_array_equal(session.undo(), after_two)
    assert session.target.prompt.order == ["fg", "bg"]
    # the same click again gives the same mask: SAM-Med3D's previous logits were restored too
    np.testing.assert_array_equal(session.add_point([5, 18, 12], True), after_three)
    session.undo()
    session.undo()
    session.undo()
    assert not session.mask.any() and session.target.previous is None
    with pytest.raises(RequestError, match="nothing to undo"):
        session.undo()


def test_a_box_starts_the_target_again() -> None:
    volume = _volume()
    fresh = Session(_sam_med3d())
    fresh.set_image(volume)
    boxed = fresh.add_box([8, 8, 9], [8, 22, 23]).copy()
    session = Session(_sam_med3d())
    session.set_image(volume)
    session.add_point([8, 15, 16], True)
    session.add_point([8, 10, 22], False)
    np.testing.assert_array_equal(session.add_box([8, 22, 23], [8, 8, 9]), boxed)
    prompt = session.target.prompt
    assert prompt.box == {
        "z_min": 8,
        "z_max": 8,
        "z_mid": 8,
        "z_mid_x_min": 9,
        "z_mid_y_min": 8,
        "z_mid_x_max": 23,
        "z_mid_y_max": 22,
    }
    assert prompt.fg == [] and prompt.bg == [] and prompt.order == []
    box = session.add_box([2, 8, 9], [12, 22, 40])  # clipped to the volume
    assert session.target.prompt.box["z_mid"] == 7
    assert session.target.prompt.box["z_mid_x_max"] == 31
    assert box.shape == volume.shape


def test_a_segment_is_continued_from() -> None:
    method = _sam_med3d()
    reference = copy.deepcopy(method)
    volume = _volume()
    mask = np.zeros(volume.shape, np.uint8)
    mask[6:10, 10:20, 10:20] = 1
    session = Session(method)
    session.set_image(volume)
    session.new_target(mask)
    np.testing.assert_array_equal(session.mask, mask)
    got = session.add_point([8, 15, 16], True)
    image = torch.from_numpy(volume.astype(np.float32))
    prompt = ClassPrompt(None, [(8, 15, 16)], [], ["fg"])
    previous = torch.from_numpy(mask.astype(np.int64))
    with torch.inference_mode():
        expected = reference.segment_interactive(image, [1.0] * 3, {1: prompt}, previous)
    np.testing.assert_array_equal(got, (expected == 1).numpy())
    with pytest.raises(RequestError, match=r"shape \(3, 3, 3\) but the image \(16, 32, 32\)"):
        session.new_target(np.ones((3, 3, 3), np.uint8))


def test_text_prompts(tmp_path) -> None:
    torch.manual_seed(0)
    clip = write_tiny_clip(tmp_path / "clip")
    method = SegVol(
        arch="tiny", roi_size=[16, 32, 32], normalize="foreground", clip_dir=str(clip)
    ).eval()
    reference = copy.deepcopy(method)
    volume = _volume()
    session = Session(method)
    session.set_image(volume, name="case.nii.gz")
    got = session.add_text("liver")
    image = torch.from_numpy(volume.astype(np.float32))
    meta = {"case_id": "x", "instance": False, "text_prompts": {1: "liver"}}
    with torch.inference_mode():
        expected = reference.segment_text(image, [1.0] * 3, {1: "liver"}, meta)
    np.testing.assert_array_equal(got, (expected == 1).numpy())
    with pytest.raises(RequestError, match="the text prompt is empty"):
        session.add_text("  ")
    medsam = Session(MedSAM(arch="tiny", image_size=64).eval())
    medsam.set_image(volume)
    with pytest.raises(RequestError, match="text prompts are not supported by MedSAM"):
        medsam.add_text("liver")


def test_intensity_windows() -> None:
    volume = _volume()
    session = Session(_sam_med3d(), intensity="ct", window="abdomen")
    image = session.set_image(volume)
    expected = window_ct(volume, 40.0, 400.0).astype(np.float32)
    np.testing.assert_array_equal(image.model_input.numpy(), expected)
    assert float(image.model_input.max()) == 255.0
    np.testing.assert_array_equal(image.array, volume)  # what was uploaded is kept as is
    with pytest.raises(RequestError, match="unknown CT window 'lung'"):
        Session(_sam_med3d(), intensity="ct", window="lung")
    mr = Session(_sam_med3d(), intensity="mr")
    with pytest.raises(RequestError, match="cannot normalise the image as MR"):
        mr.set_image(np.zeros((4, 4, 4), np.float32) - 1)
