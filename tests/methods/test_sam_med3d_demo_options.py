"""SAMMed3D's opt-in training options of the from-scratch demo: click rule, accumulated clicks
and centred targets (the defaults stay SAM-Med3D's)."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import torch

from segfm.methods import SAMMed3D
from segfm.methods.sam_med3d import ClickSimulation, center_clicks
from segfm.prompts import center_error_click

SIZE = 32


def _method(**simulation: Any) -> SAMMed3D:
    torch.manual_seed(0)
    return SAMMed3D(
        arch="tiny",
        image_size=SIZE,
        click_simulation=ClickSimulation(**simulation),
        export_official=False,
    )


def _cube(lo: tuple[int, ...], hi: tuple[int, ...]) -> torch.Tensor:
    mask = torch.zeros((1, SIZE, SIZE, SIZE), dtype=torch.bool)
    mask[(0, *(slice(a, b) for a, b in zip(lo, hi, strict=True)))] = True
    return mask


def _spy(method: SAMMed3D, calls: list[Any]) -> None:
    """Record every decoder call's points ``(z, y, x)`` and labels; None for mask-only steps."""
    decode = method.model.decode

    def spy(embeddings: torch.Tensor, points: Any = None, **kwargs: Any) -> Any:
        calls.append(None if points is None else (points[0].flip(-1), points[1]))
        return decode(embeddings, points=points, **kwargs)

    method.model.decode = spy  # type: ignore[method-assign]


def test_defaults_are_the_original_interaction() -> None:
    options = ClickSimulation()
    assert options.click_rule == "random" and not options.multi_click
    assert options.target_rule == "random"


def test_center_clicks_are_the_native_test_clicks() -> None:
    target = _cube((3, 4, 5), (15, 20, 13))
    pred = torch.zeros_like(target)
    pred[0, 3:15, 4:12, 5:13] = True  # the half y >= 12 is missed
    coords, labels = center_clicks(pred, target)
    expected, positive = center_error_click(pred[0].numpy(), target[0].numpy())
    assert coords.tolist() == [list(expected)] and labels.tolist() == [int(positive)] == [1]
    # no error left: a positive click at the target's centre instead
    coords, labels = center_clicks(target, target)
    assert labels.tolist() == [1] and bool(target[0][tuple(coords[0].tolist())])


def test_multi_click_decodes_every_click_so_far() -> None:
    method = _method(train_iterations=4, mask_only_steps=False, multi_click=True)
    calls: list[Any] = []
    _spy(method, calls)
    target = _cube((4, 4, 4), (20, 20, 20))
    method.click_loop(method.model.encode(torch.randn(1, 1, SIZE, SIZE, SIZE)), target)
    assert [c[0].shape[1] for c in calls] == [1, 2, 3, 4]
    for before, after in itertools.pairwise(calls):  # earlier clicks are kept
        assert torch.equal(after[0][:, :-1], before[0]) and torch.equal(after[1][:, :-1], before[1])


def test_multi_click_skips_mask_only_steps() -> None:
    method = _method(train_iterations=3, multi_click=True)  # the last step is mask-only
    calls: list[Any] = []
    _spy(method, calls)
    target = _cube((4, 4, 4), (20, 20, 20))
    method.click_loop(method.model.encode(torch.randn(1, 1, SIZE, SIZE, SIZE)), target)
    assert [None if c is None else c[0].shape[1] for c in calls] == [1, 2, None]


def test_center_rule_first_click_is_the_target_centre() -> None:
    method = _method(train_iterations=2, mask_only_steps=False, click_rule="center")
    calls: list[Any] = []
    _spy(method, calls)
    target = _cube((2, 6, 10), (13, 17, 21))  # centre (7, 11, 15)
    method.click_loop(method.model.encode(torch.randn(1, 1, SIZE, SIZE, SIZE)), target)
    assert calls[0][0][0, 0].tolist() == [7.0, 11.0, 15.0] and calls[0][1].tolist() == [[1]]


def test_centre_target_rule_takes_the_class_at_the_crop_centre() -> None:
    method = _method(min_target_voxels=10, target_rule="centre")
    label = torch.zeros((1, SIZE, SIZE, SIZE), dtype=torch.long)
    label[0, :10, :10, :10] = 1  # large, away from the centre
    label[0, 14:19, 14:19, 14:19] = 2  # holds the centre voxel (16, 16, 16)
    for seed in range(8):
        targets, _ = method.sample_targets(label, torch.Generator().manual_seed(seed))
        assert torch.equal(targets[0], label[0] == 2)
    label[0, 16, 16, 16] = 0  # centre in the background: a random class as before
    picked = {
        int(label[0][method.sample_targets(label, torch.Generator().manual_seed(s))[0][0]][0])
        for s in range(16)
    }
    assert picked == {1, 2}


def test_bad_options() -> None:
    with pytest.raises(ValueError, match="click_rule"):
        ClickSimulation(click_rule="edge")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="target_rule"):
        ClickSimulation(target_rule="largest")  # type: ignore[arg-type]
