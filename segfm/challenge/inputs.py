"""One case as the CVPR 2025 challenge hands it to a container: read, checked, and answered.

The evaluation scripts copy ``<case>.npz`` into ``/workspace/inputs`` and read
``/workspace/outputs/<case>.npz`` back. An input holds ``imgs`` (D, H, W) 0-255 and ``spacing``,
then by track:

- interactive: ``boxes`` (when the case has them: one dict per class in sorted class order),
  and from the second run on the accumulated ``clicks`` (per class ``{"fg": [[z, y, x], ...],
  "bg": [...]}``), ``clicks_order`` (per class ``"fg"`` / ``"bg"`` / None per click step) and
  ``prev_pred`` (the previous output);
- text: ``text_prompts`` (``{"<class id>": prompt, ..., "instance_label": 0|1}``).

Interactive classes carry no ids in the file: the i-th box or click list belongs to the i-th
class of the ground truth in sorted order, and the challenge relabels its ground truth to
1..N, so the i-th entry is class ``i + 1``. The answer is ``segs`` with the image's shape.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from segfm.data.io.npz_cvpr import NpzCase, read_case, write_prediction_npz
from segfm.errors import DataError
from segfm.evaluation.interactive import ClassPrompt


@dataclass
class ChallengeInput:
    """The contents of one input npz.

    Attributes:
        path: The file.
        image: Intensities (D, H, W) in the stored type (a 2D image as one slice).
        spacing: ``(z, y, x)`` voxel size in mm.
        shape: The stored shape of ``imgs``, which the output must have.
        boxes: Box per class id, or None when the case has no ``boxes``.
        clicks: Clicks per class id (``ClassPrompt`` with ``fg``, ``bg`` and ``order``).
        prev_pred: The previous output (D, H, W), or None.
        text_prompts: Prompt per class id (text track), or None.
        instance: ``instance_label`` of the text prompts.
    """

    path: Path
    image: np.ndarray
    spacing: list[float]
    shape: tuple[int, ...]
    boxes: dict[int, dict[str, int]] | None = None
    clicks: dict[int, ClassPrompt] = field(default_factory=dict)
    prev_pred: np.ndarray | None = None
    text_prompts: dict[int, str] | None = None
    instance: bool = False

    @property
    def track(self) -> str:
        """``interactive`` once clicks were given, else ``text`` when the case has text prompts.

        The tracks' files differ: interactive inputs carry ``boxes`` (when the case has them)
        and from the second step on ``clicks``; text inputs carry ``text_prompts``.
        """
        if self.clicks or self.text_prompts is None:
            return "interactive"
        return "text"

    @property
    def click_steps(self) -> int:
        """Click steps so far (the length of ``clicks_order``)."""
        return max((len(p.order) for p in self.clicks.values()), default=0)

    def prompts(self) -> dict[int, ClassPrompt]:
        """Box and clicks per class id (the interactive segmenters' input), sorted by id."""
        ids = sorted(set(self.boxes or {}) | set(self.clicks))
        out = {}
        for c in ids:
            given = self.clicks.get(c, ClassPrompt())
            box = (self.boxes or {}).get(c)
            out[c] = ClassPrompt(box, list(given.fg), list(given.bg), list(given.order))
        return out

    def previous(self) -> np.ndarray | None:
        """The previous prediction as the harness passes it to a segmenter.

        None at the box step and at the first click step of a case without boxes (where the
        challenge's ``prev_pred`` is all zeros because no model ran before).
        """
        if self.prev_pred is None or self.click_steps == 0:
            return None
        if self.boxes is None and self.click_steps == 1:
            return None
        return self.prev_pred


def _object(npz: Any, key: str, path: Path) -> Any:
    try:
        value = npz[key]
    except (ValueError, OSError, EOFError) as e:
        msg = f"cannot read '{key}' of {path} ({e}); the evaluator writes it as a pickled list"
        raise DataError(msg) from e
    return value.tolist() if isinstance(value, np.ndarray) and value.ndim else value


def _point(value: Any, path: Path, ndim: int) -> tuple[int, ...]:
    coords = [int(v) for v in np.asarray(value).ravel()]
    if len(coords) != ndim:
        msg = f"{path} has a click {value!r}; clicks are [z, y, x] voxel indices"
        raise DataError(msg)
    return tuple(coords)


def _clicks(raw: Any, order: Any, path: Path, ndim: int) -> dict[int, ClassPrompt]:
    """Class id (position + 1) to its clicks and their order."""
    if not isinstance(raw, (list, tuple)):
        msg = f"{path} has clicks of type {type(raw).__name__}; store a list of {{'fg', 'bg'}}"
        raise DataError(msg)
    orders = list(order) if order is not None else [[] for _ in raw]
    if len(orders) != len(raw):
        msg = f"{path} has {len(raw)} click lists but {len(orders)} clicks_order lists"
        raise DataError(msg)
    out = {}
    for i, (item, steps) in enumerate(zip(raw, orders, strict=True)):
        if not isinstance(item, dict):
            msg = f"{path} has clicks[{i}] = {item!r}; store {{'fg': [...], 'bg': [...]}}"
            raise DataError(msg)
        fg = [_point(p, path, ndim) for p in item.get("fg", [])]
        bg = [_point(p, path, ndim) for p in item.get("bg", [])]
        kinds = [None if s is None else str(s) for s in (steps or [])]
        if any(k not in (None, "fg", "bg") for k in kinds):
            msg = f"{path} has clicks_order[{i}] = {steps!r}; use 'fg', 'bg' or None per step"
            raise DataError(msg)
        out[i + 1] = ClassPrompt(None, fg, bg, kinds)
    return out


def read_input(path: str | Path) -> ChallengeInput:
    """Read and check one input npz of the challenge.

    Raises:
        DataError: If the file is unreadable or a key is malformed, naming the file and key.
    """
    path = Path(path)
    volume = read_case(NpzCase("challenge", path), read_label=False, read_prompts=True)
    assert volume.image is not None
    with np.load(path, allow_pickle=True) as npz:
        shape = tuple(npz["imgs"].shape)
        keys = set(npz.files)
        instance = False
        if "text_prompts" in keys:
            raw = _object(npz, "text_prompts", path)
            raw = raw.item() if isinstance(raw, np.ndarray) else raw
            instance = int(raw.get("instance_label", 0)) == 1 if isinstance(raw, dict) else False
        clicks = {}
        if "clicks" in keys:
            order = _object(npz, "clicks_order", path) if "clicks_order" in keys else None
            clicks = _clicks(_object(npz, "clicks", path), order, path, 3)
        prev = None
        if "prev_pred" in keys:
            prev = np.asarray(npz["prev_pred"])
            prev = prev[None] if prev.ndim == 2 else prev
            if prev.shape != volume.image.shape or prev.dtype.kind not in "biu":
                msg = (
                    f"{path} has prev_pred of shape {prev.shape} ({prev.dtype}) but imgs is "
                    f"{shape}; it must be the previous segs"
                )
                raise DataError(msg)
    boxes = None
    if volume.boxes is not None:
        boxes = {i + 1: box for i, box in enumerate(volume.boxes)}
    if volume.text_prompts is None and boxes is None and not clicks:
        msg = (
            f"{path} has neither text_prompts, boxes nor clicks (keys {sorted(keys)}); "
            "nothing to segment from"
        )
        raise DataError(msg)
    return ChallengeInput(
        path=path,
        image=volume.image,
        spacing=[float(v) for v in volume.spacing],
        shape=shape,
        boxes=boxes,
        clicks=clicks,
        prev_pred=prev,
        text_prompts=volume.text_prompts,
        instance=instance,
    )


def write_output(folder: str | Path, case: ChallengeInput, segs: np.ndarray) -> Path:
    """Write ``<folder>/<case file name>`` with ``segs`` in the input's shape, atomically.

    Ids fit uint8 as the challenge expects; above 255 (instances) they are stored as uint16,
    which the official scripts cast to uint8.
    """
    segs = np.asarray(segs).reshape(case.shape)
    path = Path(folder) / case.path.name
    write_prediction_npz(path, segs.astype(np.int64))
    return path
