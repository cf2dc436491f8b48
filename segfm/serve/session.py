"""One person segmenting one volume: the image, the current target, its prompts and history.

A session holds the uploaded image (as a tensor on the model's device, kept for the life of the
upload, so the method's embedding caches encode each region once and every later prompt runs
only the decoder) and one *target*: the object being segmented. Prompts accumulate per target as
in the interactive protocol (:mod:`segfm.evaluation.interactive`): the target is class 1, a box
is its :class:`~segfm.evaluation.interactive.ClassPrompt` box, clicks are appended to its
``fg`` / ``bg`` lists with their order, and every call gets the previous label map (None before
the method first ran) through the same ``segment_interactive`` the protocol calls. A box starts
the target again (the methods take one box per object, given at the first step); a new segment
starts a new target, empty or from a given mask.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from segfm.evaluation.interactive import ClassPrompt
from segfm.methods.loading import tracks_of
from segfm.serve.errors import RequestError
from segfm.transforms.intensity import WINDOWS, normalize_mr, window_ct

#: how uploaded intensities become the model's input: ``as_is``, a CT window, MR percentiles
Intensity = Literal["as_is", "ct", "mr"]
#: the message the 3D Slicer extension recognises: it then uploads the image and segment again
NO_IMAGE = "No image uploaded"
#: the class id the target has in the method's label maps
TARGET = 1

log = logging.getLogger("segfm.serve")


@dataclass
class Image:
    """The uploaded volume.

    Attributes:
        array: Intensities as uploaded ``(Z, Y, X)``.
        model_input: What the method gets (after :data:`Intensity`), on its device.
        spacing: Voxel size in mm ``(z, y, x)``.
        affine: Voxel-to-world matrix of the NIfTI axes ``(X, Y, Z)``.
        name: File name (or ``upload``).
    """

    array: np.ndarray
    model_input: Tensor
    spacing: list[float]
    affine: np.ndarray
    name: str

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(Z, Y, X)``."""
        return tuple(int(v) for v in self.array.shape)  # type: ignore[return-value]


@dataclass
class Target:
    """The object being segmented: its prompts, its mask and what the method gets next."""

    prompt: ClassPrompt = field(default_factory=ClassPrompt)
    mask: np.ndarray | None = None
    previous: Tensor | None = None
    text: str | None = None

    def fork(self) -> Target:
        """A copy to change, with its own prompt lists.

        The mask and the previous label map are shared: a prompt replaces them and nothing
        changes them in place, so no volume is copied per prompt.
        """
        return replace(self, prompt=copy.deepcopy(self.prompt))


@dataclass
class Snapshot:
    """A target and the method's case state before one interaction (for undo)."""

    target: Target
    state: dict[str, Any]


def affine_from_spacing(spacing: Sequence[float]) -> np.ndarray:
    """The NIfTI affine of a volume with voxel size ``(z, y, x)`` at the origin."""
    return np.diag([float(spacing[2]), float(spacing[1]), float(spacing[0]), 1.0])


class Session:
    """The server's state: a method, one image, one target.

    Args:
        method: A segfm method in eval mode (:mod:`segfm.methods.loading`).
        intensity: How uploaded intensities become the method's input: ``as_is`` (what the
            model was trained on, e.g. the CVPR 2025 npz files' 0-255, or raw values for methods
            that normalise inside: SAM-Med3D, SegVol), ``ct`` (a window in HU to 0-255, as
            MedSAM's preprocessing) or ``mr`` (0.5 / 99.5 percentiles to 0-255).
        window: CT window ``(level, width)`` in HU or a name of
            :data:`~segfm.transforms.intensity.WINDOWS`, for ``intensity: ct``.
        spacing: Voxel size ``(z, y, x)`` of uploads that carry none (the Slicer extension
            sends the voxels only).
        max_voxels: Largest image accepted.
        history: Interactions of a target that can be undone.
    """

    def __init__(
        self,
        method: Any,
        intensity: Intensity = "as_is",
        window: str | tuple[float, float] = "abdomen",
        spacing: Sequence[float] = (1.0, 1.0, 1.0),
        max_voxels: int = 512 * 512 * 1024,
        history: int = 50,
    ) -> None:
        if isinstance(window, str):
            if window not in WINDOWS:
                msg = f"unknown CT window {window!r}; choose one of {sorted(WINDOWS)}"
                raise RequestError(msg)
            window = WINDOWS[window]
        self.method, self.intensity, self.window = method, intensity, tuple(window)
        self.spacing = [float(v) for v in spacing]
        self.max_voxels, self.history_size = max_voxels, history
        self.tracks = tracks_of(type(method))
        self.device = next(method.parameters()).device
        self.image: Image | None = None
        self.target = Target()
        self.history: list[Snapshot] = []
        self.lock = threading.Lock()
        self.last_seconds = 0.0  # of the last upload or prompt (the X-Segfm-Seconds header)

    # ------------------------------------------------------------------ image
    def model_input(self, array: np.ndarray) -> np.ndarray:
        """The uploaded intensities as the method takes them (:data:`Intensity`)."""
        if self.intensity == "ct":
            return window_ct(array, *self.window).astype(np.float32)
        if self.intensity == "mr":
            try:
                return normalize_mr(array).astype(np.float32)
            except ValueError as e:
                msg = f"cannot normalise the image as MR ({e}); serve it with --intensity as_is"
                raise RequestError(msg) from e
        return array.astype(np.float32)

    def set_image(
        self,
        array: np.ndarray,
        spacing: Sequence[float] | None = None,
        affine: np.ndarray | None = None,
        name: str = "upload",
    ) -> Image:
        """Take a new volume ``(Z, Y, X)``; the target and its history start empty."""
        if array.ndim != 3 or min(array.shape) < 1:
            msg = f"the image has shape {array.shape}; send one 3D volume (slices, rows, columns)"
            raise RequestError(msg)
        if array.size > self.max_voxels:
            msg = f"the image has {array.size:,} voxels, over this server's {self.max_voxels:,}"
            raise RequestError(msg, status=413)
        if not np.isfinite(array).all():
            msg = "the image has NaN or infinite voxels; replace them before uploading"
            raise RequestError(msg)
        spacing = [float(v) for v in (spacing if spacing is not None else self.spacing)]
        if affine is None:
            affine = affine_from_spacing(spacing)
        with self.lock:
            start = time.perf_counter()
            model_input = torch.from_numpy(self.model_input(array)).to(self.device)
            self.image = Image(array, model_input, spacing, np.asarray(affine), name)
            self.target, self.history = Target(), []
            self.last_seconds = time.perf_counter() - start
            log.info("image %s: shape %s, spacing %s", name, list(array.shape), spacing)
        return self.image

    def require_image(self) -> Image:
        """The image, or the error the Slicer extension answers by uploading it again."""
        if self.image is None:
            msg = f"{NO_IMAGE}; upload a volume first (POST /upload_image or load a file)"
            raise RequestError(msg, status=409)
        return self.image

    # ----------------------------------------------------------------- target
    @property
    def mask(self) -> np.ndarray:
        """The current target's mask ``(Z, Y, X)`` uint8 (zeros before any prompt)."""
        image = self.require_image()
        if self.target.mask is None:
            return np.zeros(image.shape, dtype=np.uint8)
        return self.target.mask

    def new_target(self, mask: np.ndarray | None = None) -> None:
        """Start a new target: empty, or continuing from ``mask`` (the image's shape).

        A non-empty mask is passed to the method as the previous prediction of the next prompt.
        """
        image = self.require_image()
        with self.lock:
            if mask is not None and tuple(mask.shape) != image.shape:
                msg = (
                    f"the segment has shape {tuple(mask.shape)} but the image {image.shape}; "
                    "send a mask of the uploaded image's shape"
                )
                raise RequestError(msg)
            self.target, self.history = Target(), []
            if mask is None or not mask.any():
                return
            binary = (mask > 0).astype(np.uint8)
            self.target.mask = binary
            self.target.previous = torch.from_numpy(binary.astype(np.int64)).to(self.device)

    def _voxel(self, coord: Sequence[float], what: str) -> tuple[int, int, int]:
        image = self.require_image()
        if len(coord) != 3:
            msg = f"{what} {list(coord)} is not a voxel index [z, y, x]"
            raise RequestError(msg)
        voxel = tuple(round(float(v)) for v in coord)
        if any(not 0 <= v < n for v, n in zip(voxel, image.shape, strict=True)):
            msg = (
                f"{what} {list(voxel)} lies outside the image of shape {list(image.shape)} "
                "(voxel indices [z, y, x], from 0)"
            )
            raise RequestError(msg)
        return voxel  # type: ignore[return-value]

    def _require(self, track: str, what: str) -> None:
        if track not in self.tracks:
            msg = f"{what} are not supported by {type(self.method).__name__}"
            raise RequestError(msg)

    def add_point(self, coord: Sequence[float], positive: bool) -> np.ndarray:
        """Add a click to the target (``coord`` is ``[z, y, x]``); returns the new mask."""
        self._require("interactive", "point prompts")
        voxel = self._voxel(coord, "the point")

        def change(target: Target) -> None:
            (target.prompt.fg if positive else target.prompt.bg).append(voxel)
            target.prompt.order.append("fg" if positive else "bg")

        return self._interact("point", change)

    def add_box(
        self, one: Sequence[float], two: Sequence[float], positive: bool = True
    ) -> np.ndarray:
        """Start the target again from a box given by two opposite corners ``[z, y, x]``.

        The box becomes the CVPR box of its extent: ``z_min``..``z_max`` and its rectangle on
        the middle slice (a box drawn on one axial slice has ``z_min == z_max``).
        """
        self._require("interactive", "box prompts")
        if not positive:
            msg = f"negative boxes are not supported by {type(self.method).__name__}"
            raise RequestError(msg)
        image = self.require_image()
        for corner in (one, two):
            if len(corner) != 3:
                msg = f"the box corner {list(corner)} is not a voxel index [z, y, x]"
                raise RequestError(msg)
        a = np.rint(np.asarray(one, dtype=float)).astype(int)
        b = np.rint(np.asarray(two, dtype=float)).astype(int)
        upper = np.asarray(image.shape) - 1
        lo, hi = np.minimum(a, b), np.maximum(a, b)
        if (hi < 0).any() or (lo > upper).any():
            msg = (
                f"the box {a.tolist()}-{b.tolist()} lies outside the image of shape "
                f"{list(image.shape)} (voxel indices [z, y, x], from 0)"
            )
            raise RequestError(msg)
        lo, hi = np.clip(lo, 0, upper), np.clip(hi, 0, upper)
        box = {
            "z_min": int(lo[0]),
            "z_max": int(hi[0]),
            "z_mid": int((lo[0] + hi[0]) // 2),
            "z_mid_x_min": int(lo[2]),
            "z_mid_y_min": int(lo[1]),
            "z_mid_x_max": int(hi[2]),
            "z_mid_y_max": int(hi[1]),
        }

        def change(target: Target) -> None:
            target.prompt = ClassPrompt(box)
            target.previous, target.text = None, None

        return self._interact("box", change)

    def add_text(self, text: str) -> np.ndarray:
        """Segment the target named by ``text`` (methods with text prompts)."""
        self._require("text", "text prompts")
        text = text.strip()
        if not text:
            msg = "the text prompt is empty; name the structure, e.g. 'liver'"
            raise RequestError(msg)

        def change(target: Target) -> None:
            target.prompt, target.previous, target.text = ClassPrompt(), None, text

        return self._interact("text", change)

    def undo(self) -> np.ndarray:
        """Go back one interaction of the current target; returns the mask before it."""
        image = self.require_image()
        with self.lock:
            if not self.history:
                msg = "nothing to undo on this target"
                raise RequestError(msg)
            snapshot = self.history.pop()
            self.target = snapshot.target
            self.method.restore_case_state(image.model_input, snapshot.state)
            self.last_seconds = 0.0  # nothing ran
        return self.mask

    # ---------------------------------------------------------------- running
    def _segment(self, image: Image, target: Target) -> Tensor:
        with torch.inference_mode():
            if target.text is not None and not target.prompt.order and target.prompt.box is None:
                meta = {
                    "case_id": image.name,
                    "instance": False,
                    "text_prompts": {TARGET: target.text},
                    "file_name": image.name,
                }
                return self.method.segment_text(
                    image.model_input, image.spacing, {TARGET: target.text}, meta
                )
            prompt = copy.deepcopy(target.prompt)
            return self.method.segment_interactive(
                image.model_input, image.spacing, {TARGET: prompt}, target.previous
            )

    def _interact(self, kind: str, change: Callable[[Target], None]) -> np.ndarray:
        image = self.require_image()
        with self.lock:
            before = Snapshot(self.target, self.method.case_state())
            target = self.target.fork()
            change(target)
            start = time.perf_counter()
            try:
                seg = self._segment(image, target)
            except RequestError:
                raise
            except Exception:
                self.method.restore_case_state(image.model_input, before.state)
                raise
            seconds = time.perf_counter() - start
            target.previous = seg.to(torch.long)
            target.mask = (seg == TARGET).to(torch.uint8).cpu().numpy()
            self.target = target
            self.history = [*self.history, before][-self.history_size :]
            self.last_seconds = seconds
            log.info("%s: %.3f s, %d voxels", kind, seconds, int(target.mask.sum()))
            return target.mask
