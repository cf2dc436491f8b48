"""The challenge entry point on hand-built inputs: what a method receives, what is written."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from segfm.challenge.entry import STATE_FOLDER, ChallengePredictor
from segfm.challenge.inputs import read_input
from segfm.errors import DataError
from segfm.evaluation.interactive import ClassPrompt
from segfm.inference.cache import EmbeddingCache

SHAPE = (6, 10, 12)
BOX = {"z_min": 1, "z_max": 3, "z_mid": 2, "z_mid_x_min": 2, "z_mid_y_min": 3,
       "z_mid_x_max": 6, "z_mid_y_max": 7}  # fmt: skip


class Recorder(nn.Module):
    """A method that paints each prompted class's box (or a cube at its first click)."""

    def __init__(self, fail_class: int | None = None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(1))
        self.calls: list[dict[str, Any]] = []
        self.fail_class = fail_class
        self._cache = EmbeddingCache()

    def segment_interactive(self, image, spacing, prompts, previous):
        kept = self._cache.store(image, self).copy()
        self.calls.append(
            {"prompts": prompts, "previous": previous, "spacing": spacing, "image": image.clone(),
             "kept": kept}
        )  # fmt: skip
        if self.fail_class in prompts:
            raise RuntimeError("boom")
        self._cache.store(image, self)["seen"] = torch.tensor(float(len(self.calls)))
        seg = torch.zeros(image.shape, dtype=torch.long)
        for c, p in prompts.items():
            if p.box is not None:
                b = p.box
                seg[b["z_min"] : b["z_max"] + 1, b["z_mid_y_min"] : b["z_mid_y_max"] + 1,
                    b["z_mid_x_min"] : b["z_mid_x_max"] + 1] = c  # fmt: skip
            elif p.fg:
                z, y, x = p.fg[0]
                seg[z, y : y + 2, x : x + 2] = c
        return seg

    def segment_text(self, image, spacing, prompts, meta):
        self.calls.append({"prompts": prompts, "meta": meta})
        seg = torch.zeros(image.shape, dtype=torch.long)
        for k, c in enumerate(prompts):
            seg[k] = c
        return seg

    def case_state(self):
        return {"_cache": self._cache.entries()}

    def restore_case_state(self, image, state):
        self._cache.restore(image, self, state["_cache"])


def _image() -> np.ndarray:
    return (np.arange(np.prod(SHAPE)) % 256).astype(np.uint8).reshape(SHAPE)


def _write(path: Path, **arrays: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, imgs=_image(), spacing=np.array([2.0, 1.0, 0.5]), **arrays)
    return path


def _run(method: Recorder, inputs: Path, outputs: Path, **kw: Any) -> tuple[int, str]:
    log = io.StringIO()
    tracks = kw.pop("tracks", ["interactive", "text"])
    failed = ChallengePredictor(method, tracks, log=log, **kw).run_folder(inputs, outputs)
    return failed, log.getvalue()


def _segs(path: Path) -> np.ndarray:
    with np.load(path) as npz:
        return npz["segs"]


def test_box_step_gives_every_class_its_box_and_writes_uint8(tmp_path: Path) -> None:
    box2 = dict(BOX, z_mid_x_min=8, z_mid_x_max=10)
    _write(tmp_path / "in" / "case.npz", boxes=[BOX, box2])
    method = Recorder()
    failed, log = _run(method, tmp_path / "in", tmp_path / "out")
    assert failed == 0
    (call,) = method.calls
    assert sorted(call["prompts"]) == [1, 2]  # the i-th box is class i + 1
    assert call["prompts"][2].box == box2 and call["previous"] is None
    assert call["spacing"] == [2.0, 1.0, 0.5]
    assert torch.equal(call["image"], torch.from_numpy(_image().astype(np.float32)))
    segs = _segs(tmp_path / "out" / "case.npz")
    assert segs.dtype == np.uint8 and segs.shape == SHAPE
    assert (segs == 2).sum() == 3 * 5 * 3 and (segs == 1).sum() == 3 * 5 * 5
    assert "box step: 2 classes" in log and "start" not in log


def test_clicks_accumulate_with_their_order_and_previous_prediction(tmp_path: Path) -> None:
    prev = np.zeros(SHAPE, dtype=np.uint8)
    prev[2, 3:8, 2:7] = 1
    clicks = [{"fg": [[2, 8, 8]], "bg": [[2, 3, 2]]}, {"fg": [], "bg": []}]
    order = [["fg", "bg"], [None, None]]  # class 2 was perfect twice: no click
    _write(tmp_path / "in" / "c.npz", boxes=[BOX, BOX], clicks=clicks, clicks_order=order,
           prev_pred=prev)  # fmt: skip
    method = Recorder()
    assert _run(method, tmp_path / "in", tmp_path / "out")[0] == 0
    (call,) = method.calls
    p1, p2 = call["prompts"][1], call["prompts"][2]
    assert p1.fg == [(2, 8, 8)] and p1.bg == [(2, 3, 2)] and p1.order == ["fg", "bg"]
    assert p2.fg == [] and p2.bg == [] and p2.order == [None, None] and p2.box == BOX
    assert torch.equal(call["previous"], torch.from_numpy(prev.astype(np.int64)))


def test_case_without_boxes_first_click_step_has_no_previous(tmp_path: Path) -> None:
    # the official loop skips the box step; its first click input carries prev_pred = zeros
    clicks = [{"fg": [[1, 1, 1]], "bg": []}, {"fg": [[4, 6, 6]], "bg": []}]
    _write(tmp_path / "in" / "c.npz", clicks=clicks, clicks_order=[["fg"], ["fg"]],
           prev_pred=np.zeros(SHAPE, dtype=np.uint8))  # fmt: skip
    method = Recorder()
    assert _run(method, tmp_path / "in", tmp_path / "out")[0] == 0
    (call,) = method.calls
    assert call["previous"] is None  # as segfm test passes it: no model ran before
    assert all(p.box is None for p in call["prompts"].values())
    segs = _segs(tmp_path / "out" / "c.npz")
    assert segs[1, 1, 1] == 1 and segs[4, 6, 6] == 2


def test_all_background_clicks_and_empty_previous(tmp_path: Path) -> None:
    clicks = [{"fg": [], "bg": [[2, 2, 2], [3, 3, 3]]}]
    _write(tmp_path / "in" / "c.npz", boxes=[BOX], clicks=clicks, clicks_order=[["bg", "bg"]],
           prev_pred=np.zeros(SHAPE, dtype=np.uint8))  # fmt: skip
    method = Recorder()
    assert _run(method, tmp_path / "in", tmp_path / "out")[0] == 0
    (call,) = method.calls
    assert call["prompts"][1].bg == [(2, 2, 2), (3, 3, 3)] and call["prompts"][1].fg == []
    assert int(call["previous"].sum()) == 0  # an empty previous prediction is still passed
    assert (tmp_path / "out" / "c.npz").is_file()


def test_unreadable_case_writes_nothing_and_says_why(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "bad.npz").write_bytes(b"not a zip file")
    _write(tmp_path / "in" / "good.npz", boxes=[BOX])
    failed, log = _run(Recorder(), tmp_path / "in", tmp_path / "out")
    assert failed == 1
    assert not (tmp_path / "out" / "bad.npz").exists()
    assert (tmp_path / "out" / "good.npz").is_file()  # the next case still runs
    assert "bad.npz" in log and "no output written" in log


def test_case_without_prompts_is_refused(tmp_path: Path) -> None:
    _write(tmp_path / "in" / "c.npz")
    with pytest.raises(DataError, match="neither text_prompts, boxes nor clicks"):
        read_input(tmp_path / "in" / "c.npz")
    failed, log = _run(Recorder(), tmp_path / "in", tmp_path / "out")
    assert failed == 1 and "nothing to segment" in log


def test_a_failing_class_does_not_lose_the_others(tmp_path: Path) -> None:
    box2 = dict(BOX, z_mid_x_min=8, z_mid_x_max=10)
    _write(tmp_path / "in" / "c.npz", boxes=[BOX, box2])
    failed, log = _run(Recorder(fail_class=2), tmp_path / "in", tmp_path / "out")
    assert failed == 0
    segs = _segs(tmp_path / "out" / "c.npz")
    assert (segs == 1).any() and not (segs == 2).any()
    assert "class 2 failed" in log


def test_wrong_track_is_refused_by_name(tmp_path: Path) -> None:
    _write(tmp_path / "in" / "c.npz", text_prompts={"1": "liver", "instance_label": 0})
    failed, log = _run(Recorder(), tmp_path / "in", tmp_path / "out", tracks=["interactive"])
    assert failed == 1 and "text-track case" in log and "interactive track only" in log


def test_text_case_gets_its_prompts_and_instance_flag(tmp_path: Path) -> None:
    prompts = {"2": "spleen", "5": "aorta", "instance_label": 0}
    _write(tmp_path / "in" / "t.npz", text_prompts=prompts)
    method = Recorder()
    assert _run(method, tmp_path / "in", tmp_path / "out")[0] == 0
    (call,) = method.calls
    assert call["prompts"] == {2: "spleen", 5: "aorta"} and call["meta"]["instance"] is False
    segs = _segs(tmp_path / "out" / "t.npz")
    assert segs[0].max() == 2 and segs[1].max() == 5


def test_state_carries_to_the_next_process_only_for_the_same_inputs(tmp_path: Path) -> None:
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    _write(inputs / "c.npz", boxes=[BOX])
    first = Recorder()
    _run(first, inputs, outputs)
    assert (outputs / STATE_FOLDER / "c.pt").is_file()
    prev = _segs(outputs / "c.npz")
    clicks = [{"fg": [[2, 8, 8]], "bg": []}]
    _write(inputs / "c.npz", boxes=[BOX], clicks=clicks, clicks_order=[["fg"]], prev_pred=prev)
    second = Recorder()  # a fresh process
    failed, log = _run(second, inputs, outputs)
    assert failed == 0 and "state reused" in log
    assert float(second.calls[0]["kept"]["seen"]) == 1.0  # what the first process cached
    # a previous prediction that is not this model's last output: the state is not used
    other = prev.copy()
    other[0, 0, 0] = 1
    _write(inputs / "c.npz", boxes=[BOX], clicks=clicks, clicks_order=[["fg"]], prev_pred=other)
    third = Recorder()
    failed, log = _run(third, inputs, outputs)
    assert "state recomputed" in log and third.calls[0]["kept"] == {}


def test_prompts_of_an_input_follow_the_sorted_class_order() -> None:
    from segfm.challenge.inputs import ChallengeInput

    case = ChallengeInput(Path("x.npz"), _image(), [1.0, 1.0, 1.0], SHAPE, boxes={1: BOX, 2: BOX},
                          clicks={2: ClassPrompt(None, [(1, 1, 1)], [], ["fg"])})  # fmt: skip
    prompts = case.prompts()
    assert list(prompts) == [1, 2] and prompts[2].fg == [(1, 1, 1)] and prompts[2].box == BOX
    assert prompts[1].fg == [] and case.click_steps == 1
