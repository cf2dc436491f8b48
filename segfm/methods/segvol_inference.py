"""SegVol at test and predict time: prompts, zoom-out-zoom-in and the protocol segmenters."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from segfm.errors import DataError
from segfm.evaluation.interactive import ClassPrompt
from segfm.evaluation.options import Protocol
from segfm.inference.zoom import ClassPrompts, ZoomOptions, zoom_out_zoom_in
from segfm.methods.base import BaseTask
from segfm.models.segvol import SegVol as SegVolNet
from segfm.prompts import mask_box, sample_points
from segfm.sample import Batch, CaseMeta
from segfm.transforms.intensity import UnitRange, unit_range


def prompt_kinds(prompt: str) -> set[str]:
    """The kinds of a prompt combination: ``"box+text"`` -> ``{"box", "text"}``."""
    return set(prompt.split("+"))


def cvpr_box(box: dict[str, int], device: torch.device) -> Tensor:
    """A CVPR 2025 box as SegVol's ``(d0, h0, w0, d1, h1, w1)``, corners inclusive.

    The challenge gives the z range and the 2D box of the middle slice; SegVol takes that
    cuboid as its 3D box.
    """
    corners = [box["z_min"], box["z_mid_y_min"], box["z_mid_x_min"]]
    corners += [box["z_max"], box["z_mid_y_max"], box["z_mid_x_max"]]
    return torch.tensor(corners, dtype=torch.float, device=device)


class SegVolInference(BaseTask):
    """What :class:`~segfm.methods.segvol.SegVol` does in ``test`` and ``predict``.

    Test: the protocols of the evaluation harness call :meth:`segment_text` and
    :meth:`segment_interactive`; ``protocol: native`` is SegVol's own test, zoom-out-zoom-in of
    each labelled class prompted by its name: the text protocol. Predict: zoom-out-zoom-in of
    each class present in the label, prompted as the ``prompt`` hyper-parameter says (boxes and
    points from the label); without a label, the data module's class names as text. Volumes are
    brought to SegVol's input scale by the ``normalize`` hyper-parameter
    (:func:`~segfm.transforms.intensity.unit_range`). Text tokens are cached per
    prompt string for the run: the text encoder is frozen, so a class name is encoded once, not
    once per case.
    """

    model: SegVolNet
    inference: ZoomOptions
    prompt: str
    normalize: UnitRange
    native_protocol: ClassVar[Protocol] = Protocol("text")

    # --------------------------------------------------------------- inputs
    def _normalize(self, image: Tensor) -> Tensor:
        """Volumes ``[N, 1, *S]`` at SegVol's input scale (``normalize``)."""
        mode = self.normalize
        if mode == "none" and not getattr(self, "_range_warned", False):
            low, high = float(image.min()), float(image.max())
            if low < -0.5 or high > 1.5:
                self._range_warned = True
                rank_zero_warn(
                    f"SegVol takes volumes in [0, 1] but got values in [{low:.3g}, {high:.3g}] "
                    "with normalize: none; use normalize: foreground for raw intensities "
                    "(e.g. NpzDataModule's 0-255)"
                )
        return unit_range(image, mode)

    @staticmethod
    def _name(classes: dict[int, Any] | None, class_id: int) -> str:
        info = (classes or {}).get(class_id)
        return info.name if info is not None else str(class_id)

    def text_tokens(self, prompts: list[str]) -> Tensor:
        """Text tokens ``[N, C]`` of prompts, each string encoded once per test / predict run."""
        cache: dict[str, Tensor] | None = getattr(self, "_text_cache", None)
        if cache is None:
            cache = self._text_cache = {}
        missing = [p for p in dict.fromkeys(prompts) if p not in cache]
        if missing:
            with torch.no_grad():
                tokens = self.model.embed_text(missing)
            cache |= dict(zip(missing, tokens, strict=True))
        return torch.stack([cache[p] for p in prompts])

    def _clear_text_cache(self) -> None:
        self._text_cache: dict[str, Tensor] = {}

    # ---------------------------------------------------------------- segmenting
    def _class_prompts(
        self,
        label: Tensor | None,
        ids: list[int],
        names: list[str],
        generator: torch.Generator,
        case_id: str,
    ) -> list[ClassPrompts]:
        """Per class: text, and the box and points of its label as ``prompt`` asks."""
        kinds = prompt_kinds(self.prompt)
        if label is None and kinds != {"text"}:
            msg = (
                f"case {case_id!r} has no label to take {self.prompt} prompts from; "
                "use --model.init_args.prompt text for volumes without ground truth"
            )
            raise DataError(msg)
        text = self.text_tokens(names) if "text" in kinds and names else None
        out = []
        for k, c in enumerate(ids):
            target = None if label is None else label == c
            box = mask_box(target) if "box" in kinds and target is not None else None
            points = None
            if "point" in kinds and target is not None:
                points = sample_points(target, 3, 3, generator=generator)
            out.append(ClassPrompts(None if text is None else text[k], box, points))
        return out

    def _segment(
        self, image: Tensor, prompts: list[ClassPrompts], ids: list[int]
    ) -> tuple[Tensor, Tensor]:
        """Zoom-out-zoom-in of ``image [D, H, W]``: probabilities ``[K, *S]`` and the label map."""
        store = self._cache.store(image, self.model)  # keyed on the volume as given
        image = self._normalize(image[None, None])[0]
        logits = zoom_out_zoom_in(self.model, image, prompts, self.inference, store)
        prob = torch.sigmoid(logits)
        seg = torch.zeros(image.shape[1:], dtype=torch.long, device=image.device)
        if ids:
            best, index = prob.max(0)
            lookup = torch.tensor(ids, device=image.device)
            seg = torch.where(best > self.inference.threshold, lookup[index], seg)
        return prob, seg

    @torch.no_grad()
    def segment_text(
        self, image: Tensor, spacing: list[float], prompts: dict[int, str], meta: CaseMeta
    ) -> Tensor:
        """Segment the classes named by text (the text protocol's interface).

        Args:
            image: Intensities ``[D, H, W]``.
            spacing: Voxel size (unused: the network sees the volume resized to its window).
            prompts: Text per class id (put into SegVol's template).
            meta: The case's metadata (unused).

        Returns:
            Label map ``[D, H, W]``.
        """
        ids = list(prompts)
        text = self.text_tokens([prompts[c] for c in ids]) if ids else None
        class_prompts = [ClassPrompts(text[k]) for k in range(len(ids))]  # type: ignore[index]
        return self._segment(image, class_prompts, ids)[1]

    @torch.no_grad()
    def segment_interactive(
        self,
        image: Tensor,
        spacing: list[float],
        prompts: dict[int, ClassPrompt],
        previous: Tensor | None,
    ) -> Tensor:
        """Segment classes from their CVPR box (as a 3D box) and clicks (as points).

        Classes with neither (no box given, no click yet) stay background. ``previous`` is
        not used: SegVol takes no mask prompt.
        """
        ids, class_prompts = [], []
        for c, p in prompts.items():
            box = None if p.box is None else cvpr_box(p.box, image.device)
            clicks = p.clicks()
            points = None
            if clicks:
                coords = [q for q, _ in clicks]
                labels = [float(v) for _, v in clicks]
                points = (
                    torch.tensor(coords, dtype=torch.float, device=image.device),
                    torch.tensor(labels, dtype=torch.float, device=image.device),
                )
            if box is not None or points is not None:
                ids.append(c)
                class_prompts.append(ClassPrompts(None, box, points))
        return self._segment(image, class_prompts, ids)[1]

    # ----------------------------------------------------------------- predict
    def _case(self, batch: Batch, i: int, batch_idx: int) -> Tensor:
        """Segment sample ``i`` of a batch (prompts from its label, or text without one)."""
        meta = batch.get("meta", [{}] * (i + 1))[i]
        case_id = str(meta.get("case_id", f"case_{batch_idx}_{i}"))
        classes = (batch.get("classes") or [{}] * (i + 1))[i]
        image = batch["image"][i, 0]
        label = batch["label"][i, 0] if "label" in batch else None
        if label is not None and not bool((label > 0).any()):
            label = None  # an unlabelled predict volume
        ids = (
            [int(c) for c in torch.unique(label) if c > 0]
            if label is not None
            else sorted(c for c in classes if c > 0)
        )
        names = [self._name(classes, c) for c in ids]
        generator = torch.Generator()
        generator.manual_seed(self.evaluation.seed)
        prompts = self._class_prompts(label, ids, names, generator, case_id)
        return self._segment(image, prompts, ids)[1]

    def predict_step(self, batch: Batch, batch_idx: int) -> list[Tensor]:
        """Label maps of each volume (prompts from its label, or text without one)."""
        out = []
        for i in range(batch["image"].shape[0]):
            seg = self._case(batch, i, batch_idx)
            meta = batch.get("meta", [{}] * (i + 1))[i]
            case_id = str(meta.get("case_id", f"case_{batch_idx}_{i}"))
            label = batch["label"][i, 0] if "label" in batch else None
            classes = (batch.get("classes") or [{}] * (i + 1))[i]
            spacing = [float(v) for v in batch["spacing"][i]]
            self.write_case(case_id, seg, batch["image"][i, 0], label, spacing, meta, classes)
            out.append(seg.cpu())
        return out

    # ------------------------------------------------------------------ hooks
    def on_test_epoch_start(self) -> None:
        """Fresh text cache (the weights may have changed since the last run), then the base's."""
        self._clear_text_cache()
        super().on_test_epoch_start()

    def on_predict_epoch_start(self) -> None:
        """Check the output folder, a fresh writer and text cache."""
        super().on_predict_epoch_start()
        self._clear_text_cache()
