"""The 3D Slicer extension's requests drive segfm serve as the interactive protocol would.

A client sending exactly the SlicerNNInteractive extension's requests (:mod:`.slicer_client`)
uploads a volume and an empty segment, draws a box, places three points, then starts a new
segment and places two more; every mask it gets back must equal the prediction of
:func:`segfm.evaluation.interactive.run_interactive` (the protocol ``segfm test`` runs) with the
same prompts, computed by a separate copy of the method with the same weights.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from segfm.evaluation.interactive import run_interactive
from segfm.methods import MedSAM, SAMMed3D, SegVol
from segfm.serve.app import create_app
from segfm.serve.session import Session
from tests.serve.conftest import live_server
from tests.serve.slicer_client import SlicerClient, SlicerError

METHODS = {
    "sam_med3d": lambda: SAMMed3D(arch="tiny", image_size=32),
    "medsam": lambda: MedSAM(arch="tiny", image_size=64),
    "segvol": lambda: SegVol(arch="tiny", roi_size=[16, 32, 32], normalize="foreground"),
}


def _scene() -> tuple[np.ndarray, np.ndarray]:
    """A CT-like int16 volume (Z, Y, X) with two objects, and their labels 1 and 2."""
    z, y, x = np.meshgrid(np.arange(20), np.arange(40), np.arange(40), indexing="ij")
    label = np.zeros((20, 40, 40), dtype=np.int64)
    label[((z - 9) / 5) ** 2 + ((y - 14) / 8) ** 2 + ((x - 13) / 7) ** 2 <= 1] = 1
    label[((z - 11) / 4) ** 2 + ((y - 28) / 5) ** 2 + ((x - 27) / 6) ** 2 <= 1] = 2
    rng = np.random.default_rng(0)
    volume = rng.normal(-100, 20, label.shape) + 180 * (label == 1) + 90 * (label == 2)
    return volume.astype(np.int16), label


def _axial_box(mask: np.ndarray) -> dict[str, int]:
    """The box a person draws on the object's middle axial slice (one slice: z_min == z_max)."""
    zs = np.nonzero(mask.any(axis=(1, 2)))[0]
    z = int(zs[len(zs) // 2])
    ys, xs = np.nonzero(mask[z])
    y0, y1, x0, x1 = int(ys.min()), int(ys.max()), int(xs.min()), int(xs.max())
    return {
        "z_min": z,
        "z_max": z,
        "z_mid": z,
        "z_mid_x_min": x0,
        "z_mid_y_min": y0,
        "z_mid_x_max": x1,
        "z_mid_y_max": y1,
    }


def _clicks_in_order(prompt) -> list[tuple[tuple[int, int, int], bool]]:
    """The protocol's clicks of one class in the order it placed them."""
    fg, bg, out = iter(prompt.fg), iter(prompt.bg), []
    for kind in prompt.order:
        if kind == "fg":
            out.append((next(fg), True))
        elif kind == "bg":
            out.append((next(bg), False))
    return out


@pytest.mark.parametrize("name", list(METHODS))
def test_slicer_requests_give_the_protocols_masks(name: str, tmp_path) -> None:
    torch.manual_seed(0)
    method = METHODS[name]().eval()
    reference = copy.deepcopy(method)
    volume, label = _scene()
    image = torch.from_numpy(volume.astype(np.float32))
    spacing = [1.0, 1.0, 1.0]

    # the protocol: a box then three clicks on object 1; then two clicks alone on object 2
    first = torch.from_numpy((label == 1).astype(np.int64))
    box = _axial_box(label == 1)
    with torch.inference_mode():
        boxed = run_interactive(
            reference.segment_interactive, image, first, spacing, {1: box}, num_clicks=3
        )
    second = torch.from_numpy((label == 2).astype(np.int64))
    with torch.inference_mode():
        clicked = run_interactive(
            reference.segment_interactive, image, second, spacing, None, num_clicks=2, box=False
        )
    clicks_one = _clicks_in_order(boxed.prompts[1])
    clicks_two = _clicks_in_order(clicked.prompts[1])
    assert len(clicks_one) == 3 and len(clicks_two) == 2  # a tiny random model is never perfect

    session = Session(method)
    with live_server(create_app(session, tmp_path / "run")) as url:
        slicer = SlicerClient(url, volume)
        assert slicer.test_connection() == 200
        with pytest.raises(SlicerError, match="No image uploaded"):
            slicer.point_prompt((1, 1, 1), True)  # the extension then uploads and repeats
        assert slicer.upload_image() == {"status": "ok"}
        assert slicer.upload_segment(np.zeros(volume.shape, dtype=np.uint8)) == {"status": "ok"}

        # Slicer's IJK is (x, y, z); the client reverses it, as the extension does
        one = [box["z_mid_x_min"], box["z_mid_y_min"], box["z_mid"]]
        two = [box["z_mid_x_max"], box["z_mid_y_max"], box["z_mid"]]
        mask = slicer.bbox_prompt(one, two, positive_click=True)
        np.testing.assert_array_equal(mask, boxed.segs[0] == 1)
        assert session.target.prompt.box == box
        for k, (point, positive) in enumerate(clicks_one, start=1):
            mask = slicer.point_prompt(point[::-1], positive)
            np.testing.assert_array_equal(mask, boxed.segs[k] == 1, err_msg=f"click {k}")
        assert mask.any()

        # a new, empty segment is a new target: its first click gets no previous prediction
        slicer.upload_segment(np.zeros(volume.shape, dtype=np.uint8))
        assert session.target.prompt.box is None and session.target.previous is None
        for k, (point, positive) in enumerate(clicks_two):
            mask = slicer.point_prompt(point[::-1], positive)
            np.testing.assert_array_equal(mask, clicked.segs[k] == 1, err_msg=f"new target {k}")
        np.testing.assert_array_equal(session.mask, mask)

        with pytest.raises(SlicerError, match="lasso prompts are not supported by"):
            slicer.lasso_or_scribble_prompt(mask, True, "lasso")
        with pytest.raises(SlicerError, match="scribble prompts are not supported by"):
            slicer.lasso_or_scribble_prompt(mask, True, "scribble")
        # still serving, the target untouched by the refused prompts
        np.testing.assert_array_equal(slicer.point_prompt(clicks_two[0][0][::-1], True) >= 0, True)
    assert slicer.requests[:4] == [
        "/add_point_interaction",
        "/upload_image",
        "/upload_segment",
        "/add_bbox_interaction",
    ]
