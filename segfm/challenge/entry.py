"""The challenge entry point: every case of an inputs folder segmented into the outputs folder.

One run is one interaction step of every case in ``inputs`` (the evaluator puts one case there
at a time). The method sees exactly what ``segfm test`` gives it on the same npz case: the
image as float 0-255, the spacing, and per class its box and accumulated clicks
(:meth:`~segfm.challenge.inputs.ChallengeInput.prompts`), plus the previous prediction where the
harness passes one. What a method keeps between the steps of a case inside one process (image
embeddings, SAM-Med3D's previous logits) is saved after each step into
``<outputs>/.segfm_state/<case>.pt`` and taken back by the next step's process when the image,
the weights and the previous prediction are the ones it was saved with, so each fresh process
computes what one long process would, without encoding the image again.

Nothing fails silently: a case that cannot be read or segmented writes no output and says why
on stderr (the run's exit status is then 1); a class whose segmentation fails is reported and
the other classes are still written. Timings (start-up, per case, per class) go to stderr.
"""

from __future__ import annotations

import hashlib
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch
from torch import Tensor

from segfm.challenge.inputs import ChallengeInput, read_input, write_output
from segfm.errors import DataError, SegfmError

STATE_FOLDER = ".segfm_state"


def _digest(array: np.ndarray) -> str:
    data = np.ascontiguousarray(array)
    head = f"{data.shape}{data.dtype}".encode()
    return hashlib.blake2b(head + data.tobytes(), digest_size=16).hexdigest()


def weights_digest(method: torch.nn.Module) -> str:
    """A digest of the method's weights (names, shapes and a sample of values)."""
    h = hashlib.blake2b(digest_size=16)
    for name, tensor in method.state_dict().items():
        h.update(f"{name}{tuple(tensor.shape)}".encode())
        flat = tensor.detach().reshape(-1)
        if flat.numel():
            h.update(flat[:: max(1, flat.numel() // 64)].float().cpu().numpy().tobytes())
    return h.hexdigest()


@dataclass
class CaseTimes:
    """Seconds spent on one case."""

    read: float = 0.0
    segment: float = 0.0
    write: float = 0.0
    classes: int = 0
    state: str = "none"


class StateFile:
    """The method's per-case state between the processes of one case's steps."""

    def __init__(self, outputs: Path, enabled: bool, weights: str) -> None:
        self.folder = outputs / STATE_FOLDER
        self.enabled, self.weights = enabled, weights

    def _path(self, case: ChallengeInput) -> Path:
        return self.folder / f"{case.path.stem}.pt"

    def load(self, case: ChallengeInput) -> dict[str, Any] | None:
        """The state saved by the previous step of this case, if it still applies."""
        if not self.enabled or case.click_steps == 0:
            return None
        path = self._path(case)
        if not path.is_file():
            return None
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # a stale or partial file: recompute instead
            return None
        previous = case.prev_pred
        if (
            saved.get("image") != _digest(case.image)
            or saved.get("weights") != self.weights
            or previous is None
            or saved.get("segs") != _digest(previous.astype(np.uint8))
            or saved.get("click_steps") != case.click_steps - 1
        ):
            return None
        return saved["state"]

    def save(self, case: ChallengeInput, state: dict[str, Any], segs: np.ndarray) -> None:
        """Keep this step's state for the next one; states of other cases are removed."""
        if not self.enabled:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self._path(case)
        for old in self.folder.glob("*.pt"):
            if old != path:
                old.unlink(missing_ok=True)
        record = {
            "image": _digest(case.image),
            "weights": self.weights,
            "segs": _digest(np.asarray(segs).reshape(case.image.shape).astype(np.uint8)),
            "click_steps": case.click_steps,
            "state": _to_cpu(state),
        }
        tmp = path.with_suffix(".tmp")
        torch.save(record, tmp)
        tmp.replace(path)


def _to_cpu(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(v) for v in value)
    return value


def _to_device(value: Any, device: torch.device) -> Any:
    if isinstance(value, Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_device(v, device) for v in value)
    return value


def _per_class(
    run: Callable[[list[int]], Tensor], ids: list[int], fallback: Tensor, log: TextIO, name: str
) -> Tensor:
    """Segment class by class after a joint call failed; a failing class keeps ``fallback``."""
    seg = torch.zeros_like(fallback)
    for c in ids:
        try:
            out = run([c])
            seg = torch.where((out == c) & (seg == 0), out, seg)
        except Exception as e:  # one class must not lose the others
            print(
                f"segfm challenge: {name}: class {c} failed ({e!r}); kept its previous mask",
                file=log,
            )
            seg = torch.where((fallback == c) & (seg == 0), fallback, seg)
    return seg


class ChallengePredictor:
    """A loaded method answering challenge inputs.

    Args:
        method: A segfm method in eval mode (see :func:`segfm.challenge.bundle.load_method`).
        tracks: The tracks it can enter.
        keep_state: Carry the method's per-case state between steps (:class:`StateFile`).
        track: ``interactive`` or ``text`` for every case; ``auto`` decides per case
            (:attr:`~segfm.challenge.inputs.ChallengeInput.track`).
        log: Where timings and errors go.
    """

    def __init__(
        self,
        method: Any,
        tracks: list[str],
        keep_state: bool = True,
        track: str = "auto",
        log: TextIO = sys.stderr,
    ) -> None:
        self.method, self.tracks, self.keep_state, self.log = method, tracks, keep_state, log
        self.track = track
        self.device = next(method.parameters()).device
        self.weights = weights_digest(method) if keep_state else ""

    def segment(self, case: ChallengeInput, states: StateFile, times: CaseTimes) -> np.ndarray:
        """The label map of one case (the input's shape) as the method predicts it."""
        track = case.track if self.track == "auto" else self.track
        if track not in self.tracks:
            msg = (
                f"{case.path.name} is a {track}-track case but this model enters the "
                f"{' and '.join(self.tracks)} track only"
            )
            raise DataError(msg)
        if track == "text" and case.text_prompts is None:
            msg = f"{case.path.name} has no text_prompts for the text track"
            raise DataError(msg)
        if track == "interactive" and case.boxes is None and not case.clicks:
            msg = f"{case.path.name} has neither boxes nor clicks for the interactive track"
            raise DataError(msg)
        image = torch.from_numpy(case.image.astype(np.float32)).to(self.device)
        name = case.path.name
        with torch.inference_mode():
            if track == "text":
                prompts = dict(case.text_prompts or {})
                meta = {
                    "case_id": case.path.stem,
                    "instance": case.instance,
                    "text_prompts": prompts,
                    "file_name": name,
                }

                def run(ids: list[int]) -> Tensor:
                    chosen = {c: prompts[c] for c in ids}
                    return self.method.segment_text(image, case.spacing, chosen, meta)

                ids = list(prompts)
                fallback = torch.zeros(image.shape, dtype=torch.long, device=self.device)
            else:
                prompts_all = case.prompts()
                active = {c: p for c, p in prompts_all.items() if p.box is not None or p.fg or p.bg}
                previous_np = case.previous()
                previous = None
                if previous_np is not None:
                    previous = torch.from_numpy(previous_np.astype(np.int64)).to(self.device)
                state = states.load(case)
                if state is not None:
                    self.method.restore_case_state(image, _to_device(state, self.device))
                    times.state = "reused"
                elif case.click_steps:
                    times.state = "recomputed"

                def run(ids: list[int]) -> Tensor:
                    chosen = {c: active[c] for c in ids}
                    return self.method.segment_interactive(image, case.spacing, chosen, previous)

                ids = list(active)
                fallback = (
                    previous
                    if previous is not None
                    else torch.zeros(image.shape, dtype=torch.long, device=self.device)
                )
            times.classes = len(ids)
            try:
                seg = run(ids)
            except Exception as e:
                print(
                    f"segfm challenge: {name}: segmenting all classes together failed ({e!r}); "
                    "trying class by class",
                    file=self.log,
                )
                traceback.print_exc(file=self.log)
                seg = _per_class(run, ids, fallback, self.log, name)
            segs = seg.to(torch.long).cpu().numpy()
            if track == "interactive":
                states.save(case, self.method.case_state(), segs)
        return segs

    def run_folder(self, inputs: str | Path, outputs: str | Path) -> int:
        """Answer every ``*.npz`` of ``inputs`` into ``outputs``; returns the cases that failed."""
        inputs, outputs = Path(inputs), Path(outputs)
        if not inputs.is_dir():
            msg = f"inputs folder {inputs} does not exist; mount the cases there or pass --inputs"
            raise DataError(msg)
        outputs.mkdir(parents=True, exist_ok=True)
        states = StateFile(outputs, self.keep_state, self.weights)
        cases = sorted(inputs.glob("*.npz"))
        if not cases:
            print(f"segfm challenge: no .npz case in {inputs}; nothing to do", file=self.log)
        failed = 0
        for path in cases:
            times = CaseTimes()
            start = time.perf_counter()
            try:
                case = read_input(path)
                times.read = time.perf_counter() - start
                start = time.perf_counter()
                segs = self.segment(case, states, times)
                times.segment = time.perf_counter() - start
                start = time.perf_counter()
                out = write_output(outputs, case, segs)
                times.write = time.perf_counter() - start
            except SegfmError as e:
                failed += 1
                print(f"segfm challenge: {path.name}: {e}; no output written", file=self.log)
                continue
            except Exception as e:
                failed += 1
                print(
                    f"segfm challenge: {path.name}: failed ({e!r}); no output written",
                    file=self.log,
                )
                traceback.print_exc(file=self.log)
                continue
            step = self._step_name(case)
            per_class = times.segment / max(times.classes, 1)
            print(
                f"segfm challenge: {path.name} {step}: {times.classes} classes, read "
                f"{times.read:.2f} s, segment {times.segment:.2f} s ({per_class:.2f} s per "
                f"class), write {times.write:.2f} s, state {times.state} -> {out}",
                file=self.log,
            )
        return failed

    @staticmethod
    def _step_name(case: ChallengeInput) -> str:
        if case.track == "text":
            return "text"
        if case.click_steps == 0:
            return "box step"
        return f"click step {case.click_steps}"
