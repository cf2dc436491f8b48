"""SegVol's training step against the original's, on one batch with equal weights and draws.

The reference is ``benchmarks/reference/train_segvol.py``: BAAI-DCAI/SegVol @5768c97
``train.py`` lines 62-92, ``network/model.py`` lines 33-200, ``utils/loss.py`` lines 11-49 and
``utils/monai_inferers_utils.py`` lines 365-460 (``generate_box``, ``select_points``),
re-written statement by statement. segfm's step runs first; every point set and pseudo region it
draws is recorded, then turned into the original's draws (its ``random.randint`` counts,
``torch.randint`` first positive, ``torch.randperm`` orders, ``random.choice`` regions) for the
reference, which runs on the same network. Losses and the gradient norm of each parameter group
must agree within 1e-5.
"""

from __future__ import annotations

from collections import deque
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

from benchmarks.reference import train_segvol as ref
from data_tools.tiny_clip import write_tiny_clip
from segfm.methods import segvol as segvol_module
from segfm.methods.segvol import SegVol, SegVolLoss
from segfm.sample import ClassInfo

ROI = (16, 32, 32)
NAMES = {1: ClassInfo("liver"), 2: ClassInfo("kidney")}
GROUPS = ("image_encoder", "prompt_encoder", "mask_decoder", "text_encoder")


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_clip(tmp_path_factory.mktemp("clip") / "clip")


def _method(clip_dir: Path, **loss: Any) -> tuple[SegVol, dict[str, Tensor]]:
    torch.manual_seed(0)
    method = SegVol(
        arch="tiny",
        clip_dir=str(clip_dir),
        roi_size=ROI,
        lr_schedule="constant",
        normalize="none",  # the volumes are already in [0, 1], as M3DSegDataModule's
        loss=SegVolLoss(**loss),
    )
    logged: dict[str, Tensor] = {}
    method.log = lambda name, value, **_: logged.__setitem__(name, value.detach())  # type: ignore[method-assign,assignment]
    return method.train(), logged


def _batch(size: int, both_classes: bool = False) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(1)
    label = torch.zeros(size, 1, *ROI, dtype=torch.long)
    label[0, 0, 3:9, 5:19, 6:22] = 2
    if size > 1:
        label[1, 0, 7:14, 12:28, 3:13] = 2
    if both_classes:
        label[0, 0, 10:15, 22:30, 20:30] = 1  # class 1 in sample 0 only: empty in sample 1
    image = torch.rand(size, 1, *ROI, generator=gen) * 0.3 + 0.5 * (label > 0)
    regions = torch.zeros(size, 1, *ROI, dtype=torch.long)
    regions[:, :, :, 16:] = 1
    regions[:, :, 8:] += 2
    regions[:, :, 2:5, 3:7, 3:7] = 4  # inside every box of region 0: the > 90 % rule adds it
    regions[:, :, :2] = -1  # cleansed voxels
    return {
        "image": image,
        "label": label,
        "pseudo_label": regions,
        "classes": [NAMES] * size,
    }


class _Recorder:
    """Wraps segfm's draws (point sets, pseudo regions) and keeps what they returned."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.events: list[tuple[str, Any]] = []
        points, sentinel = segvol_module.sample_points, segvol_module._sentinel_points
        pick = SegVol._pick_region

        def record_points(mask: Tensor, *args: Any, **kwargs: Any) -> Any:
            out = points(mask, *args, **kwargs)
            self.events.append(("points", (mask, out)))
            return out

        def record_sentinel(mask: Tensor, *args: Any, **kwargs: Any) -> Any:
            out = sentinel(mask, *args, **kwargs)
            self.events.append(("points", (mask, out)))
            return out

        def record_region(ids: Tensor, generator: torch.Generator) -> Tensor:
            out = pick(ids, generator)
            self.events.append(("region", int(out)))
            return out

        monkeypatch.setattr(segvol_module, "sample_points", record_points)
        monkeypatch.setattr(segvol_module, "_sentinel_points", record_sentinel)
        monkeypatch.setattr(SegVol, "_pick_region", staticmethod(record_region))


class _Injected:
    """The original's draws that reproduce segfm's recorded point sets and regions."""

    def __init__(self, events: list[tuple[str, Any]]) -> None:
        self.ints: deque[int] = deque()
        self.firsts: deque[int] = deque()
        self.perms: deque[Tensor] = deque()
        self.choices: deque[int] = deque()
        for kind, value in events:
            if kind == "region":
                self.choices.append(value)
            else:
                self._points(*value)

    def _points(self, mask: Tensor, drawn: tuple[Tensor, Tensor]) -> None:
        coords, labels = drawn
        positives = [tuple(p) for p in torch.nonzero(mask).tolist()]
        negatives = [tuple(p) for p in torch.nonzero(~mask.bool()).tolist()]
        pos = [tuple(int(v) for v in c) for c in coords[labels == 1].tolist()]
        neg = [tuple(int(v) for v in c) for c in coords[labels == 0].tolist()]
        self.ints.extend([max(len(pos) - 1, 0), len(neg)])
        if pos:
            self.firsts.append(positives.index(pos[0]))
            if len(pos) > 1:
                self.perms.append(self._order([positives.index(p) for p in pos[1:]], positives))
        if neg:
            self.perms.append(self._order([negatives.index(p) for p in neg], negatives))

    @staticmethod
    def _order(first: list[int], pool: list) -> Tensor:
        rest = [i for i in range(len(pool)) if i not in set(first)]
        return torch.tensor(first + rest)

    def randint(self, low: int, high: int) -> int:
        value = self.ints.popleft()
        assert low <= value <= high or value == 0  # an empty target draws a count it never uses
        return value

    def choice(self, ids: Tensor) -> int:
        value = self.choices.popleft()
        assert value in ids.tolist()
        return value

    def torch_randint(self, n: int) -> int:
        return self.firsts.popleft()

    def randperm(self, n: int) -> Tensor:
        perm = self.perms.popleft()
        assert len(perm) == n
        return perm

    def exhausted(self) -> bool:
        return not (self.ints or self.firsts or self.perms or self.choices)


def _grad_norms(model: torch.nn.Module) -> dict[str, float]:
    norms = {}
    for group in GROUPS:
        grads = [p.grad.flatten() for p in getattr(model, group).parameters() if p.grad is not None]
        norms[group] = float(torch.cat(grads).norm()) if grads else 0.0
    return norms


def _segfm_step(method: SegVol, batch: dict[str, Any]) -> tuple[Tensor, dict[str, float]]:
    method.zero_grad()
    loss = method._step(batch, 0, "train")
    loss.backward()
    return loss.detach(), _grad_norms(method.model)


def _reference_step(
    method: SegVol, batch: dict[str, Any], draws: ref.Draws
) -> tuple[Tensor, Tensor, Tensor, dict[str, float]]:
    method.zero_grad()
    labels = (batch["label"][:, 0] == 2).float()
    loss, sl, ssl = ref.training_losses(
        method.model, batch["image"], "kidney", labels, batch["pseudo_label"], draws
    )
    loss.backward()
    return loss.detach(), sl.detach(), ssl.detach(), _grad_norms(method.model)


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-5 * max(1.0, abs(b))


@pytest.mark.parametrize("size", [2, 1])
def test_step_computes_the_originals_loss_and_gradients(
    clip_dir: Path, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    # the original's rules for what segfm departs from by default: -1 voxels as background,
    # and at batch 1 the squeeze's per-slice Dice
    method, logged = _method(clip_dir, pseudo_ignore=False, squeeze_dice=size == 1)
    batch = _batch(size)
    recorder = _Recorder(monkeypatch)
    loss, grads = _segfm_step(method, batch)
    draws = _Injected(recorder.events)
    ref_loss, ref_sl, ref_ssl, ref_grads = _reference_step(method, batch, draws)
    assert draws.exhausted()
    assert len(draws.choices) == 0 and len(recorder.events) == size * (1 + 3 + 6)
    assert _close(float(logged["train_sl_loss"]), float(ref_sl))
    assert _close(float(logged["train_ssl_loss"]), float(ref_ssl))
    assert _close(float(loss), float(ref_loss))
    assert grads["text_encoder"] == ref_grads["text_encoder"] == 0.0  # frozen, as dim_align
    for group in GROUPS[:3]:
        assert grads[group] > 0
        assert _close(grads[group], ref_grads[group]), (group, grads[group], ref_grads[group])


def test_defaults_depart_where_documented(clip_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # batch 1: the default per-volume Dice differs from the original's per-slice one; the
    # default pseudo term leaves -1 voxels out where the original counted them as background
    method, logged = _method(clip_dir)
    batch = _batch(1)
    recorder = _Recorder(monkeypatch)
    _segfm_step(method, batch)
    _, ref_sl, ref_ssl, _ = _reference_step(method, batch, _Injected(recorder.events))
    assert abs(float(logged["train_sl_loss"]) - float(ref_sl)) > 1e-3
    assert abs(float(logged["train_ssl_loss"]) - float(ref_ssl)) > 1e-3


def test_classes_average_the_originals_per_class_steps_with_sentinel_prompts(
    clip_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # two classes, one absent from sample 1: the original steps once per class, prompting the
    # empty target with [-1] * 6 and -1 points; segfm's one step on the mean over classes has
    # the mean of the original's per-class losses and gradients (first step, same weights)
    method, _ = _method(clip_dir, sentinel_prompts=True, ssl_weight=0.0)
    batch = _batch(2, both_classes=True)
    recorder = _Recorder(monkeypatch)
    loss, grads = _segfm_step(method, batch)
    assert [kind for kind, _ in recorder.events] == ["points"] * 4
    draws = _Injected(recorder.events)
    method.zero_grad()
    image = batch["image"]
    embedding = method.model.image_encoder(image)
    losses = []
    for class_id, name in ((1, "liver"), (2, "kidney")):
        labels = (batch["label"][:, 0] == class_id).float()
        sl = ref.supervised_forward(method.model, embedding, ROI, name, labels, draws)
        losses.append(sl)
    mean = (losses[0] + losses[1]) / 2
    mean.backward()
    assert draws.exhausted()
    assert _close(float(loss), float(mean))
    ref_grads = _grad_norms(method.model)
    for group in GROUPS[:3]:
        assert _close(grads[group], ref_grads[group]), (group, grads[group], ref_grads[group])
