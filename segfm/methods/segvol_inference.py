"""SegVol at test and predict time: prompts, zoom-out-zoom-in, protocol segmenters, tables."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor

from segfm.errors import DataError
from segfm.evaluation import CaseTable, dice, log_table, surface_dice
from segfm.evaluation.interactive import ClassPrompt
from segfm.evaluation.writers import write_prediction
from segfm.inference.zoom import ClassPrompts, zoom_out_zoom_in
from segfm.methods.base import BaseTask
from segfm.models.segvol import SegVol as SegVolNet
from segfm.prompts import mask_box, sample_points
from segfm.sample import Batch, CaseMeta
from segfm.transforms.intensity import unit_range


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

    Native test / predict: zoom-out-zoom-in of each class present in the label, prompted as the
    ``prompt`` hyper-parameter says (boxes and points from the label); without a label, the data
    module's class names as text. The protocols of the evaluation harness call
    :meth:`segment_text` and :meth:`segment_interactive`. Volumes are brought to SegVol's input
    scale by the ``normalize`` hyper-parameter (:func:`~segfm.transforms.intensity.unit_range`).
    Text tokens are cached per prompt string for the run: the text encoder is frozen, so a class
    name is encoded once, not once per case.
    """

    model: SegVolNet

    # --------------------------------------------------------------- inputs
    def _normalize(self, image: Tensor) -> Tensor:
        """Volumes ``[N, 1, *S]`` at SegVol's input scale (``normalize``)."""
        mode = self.hparams["normalize"]
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
        kinds = prompt_kinds(self.hparams["prompt"])
        if label is None and kinds != {"text"}:
            msg = (
                f"case {case_id!r} has no label to take {self.hparams['prompt']} prompts from; "
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
        image = self._normalize(image[None, None])[0]
        logits = zoom_out_zoom_in(
            self.model,
            image,
            prompts,
            overlap=self.hparams["overlap"],
            zoom_in=self.hparams["zoom_in"],
            threshold=self.hparams["threshold"],
            sw_batch_size=self.hparams["sw_batch_size"],
        )
        prob = torch.sigmoid(logits)
        seg = torch.zeros(image.shape[1:], dtype=torch.long, device=image.device)
        if ids:
            best, index = prob.max(0)
            lookup = torch.tensor(ids, device=image.device)
            seg = torch.where(best > self.hparams["threshold"], lookup[index], seg)
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

    # ------------------------------------------------------------ native test
    def configure_metrics(self) -> None:
        """Empty inference tables."""
        self.class_table = CaseTable(["dsc_segvol", "dsc", "nsd", "seconds"])
        self.case_table = CaseTable(["dsc", "nsd"])
        self._overlays_written = 0

    def _scores(
        self, prob: Tensor, label: Tensor, c: int, spacing: list[float]
    ) -> dict[str, float]:
        """SegVol's Dice ``2TP / (|P| + |G| + 1)``, the standard Dice and NSD of class ``c``."""
        pred, ref = prob > self.hparams["threshold"], label == c
        tp = int((pred & ref).sum())
        return {
            "dsc_segvol": 2 * tp / (int(pred.sum()) + int(ref.sum()) + 1),
            "dsc": dice(pred, ref),
            "nsd": surface_dice(pred, ref, spacing, self.hparams["nsd_tolerance"]),
        }

    def _case(self, batch: Batch, i: int, batch_idx: int, score: bool) -> dict[str, Any]:
        """Segment sample ``i`` of a batch (and score it against its label)."""
        meta = batch.get("meta", [{}] * (i + 1))[i]
        case_id = str(meta.get("case_id", f"case_{batch_idx}_{i}"))
        classes = (batch.get("classes") or [{}] * (i + 1))[i]
        image = batch["image"][i, 0]
        label = batch["label"][i, 0] if "label" in batch else None
        if label is not None and not bool((label > 0).any()) and not score:
            label = None  # an unlabelled predict volume
        ids = (
            [int(c) for c in torch.unique(label) if c > 0]
            if label is not None
            else sorted(c for c in classes if c > 0)
        )
        names = [self._name(classes, c) for c in ids]
        generator = torch.Generator()
        generator.manual_seed(self.hparams["click_seed"])
        started = time.perf_counter()
        prompts = self._class_prompts(label, ids, names, generator, case_id)
        prob, seg = self._segment(image, prompts, ids)
        seconds = time.perf_counter() - started
        spacing = [float(v) for v in batch["spacing"][i]]
        scores = []
        if score and label is not None:
            for k, c in enumerate(ids):
                row = self._scores(prob[k], label, c, spacing)
                scores.append(row)
                self.class_table.add(
                    case=case_id,
                    class_id=c,
                    class_name=names[k],
                    prompt=self.hparams["prompt"],
                    **row,
                    seconds=seconds,
                )
        return {
            "case_id": case_id,
            "seg": seg,
            "image": image,
            "label": label,
            "meta": meta,
            "spacing": spacing,
            "scores": scores,
        }

    def native_test_step(self, batch: Batch, batch_idx: int) -> None:
        """Zoom-out-zoom-in of every labelled class of each volume, scored per class."""
        for i in range(batch["image"].shape[0]):
            r = self._case(batch, i, batch_idx, score=True)
            if r["scores"]:
                dsc = float(np.mean([s["dsc"] for s in r["scores"]]))
                nsd = float(np.mean([s["nsd"] for s in r["scores"]]))
                self.case_table.add(case=r["case_id"], classes=len(r["scores"]), dsc=dsc, nsd=nsd)
                self.log("test_dsc", dsc, batch_size=1, on_epoch=True, sync_dist=True)
                self.log("test_nsd", nsd, batch_size=1, on_epoch=True, sync_dist=True)
            self._write_outputs(r)

    def predict_step(self, batch: Batch, batch_idx: int) -> list[Tensor]:
        """Label maps of each volume (prompts from its label, or text without one)."""
        out = []
        for i in range(batch["image"].shape[0]):
            r = self._case(batch, i, batch_idx, score=False)
            self._write_outputs(r)
            out.append(r["seg"].cpu())
        return out

    def _write_outputs(self, r: dict[str, Any]) -> None:
        if self.hparams["save_predictions"]:
            seg = r["seg"].cpu().numpy()
            write_prediction(
                self.output_dir / "predictions", r["case_id"], seg, r["meta"], r["spacing"]
            )
        if self._overlays_written < self.hparams["num_overlays"]:
            mask = r["label"] if r["label"] is not None else r["seg"]
            if bool((mask > 0).any()):
                z = int((mask > 0).flatten(1).sum(1).argmax())
                ref = None if r["label"] is None else r["label"][z].cpu().numpy()
                name = f"{r['case_id'].replace('/', '_')}_z{z:03d}"
                self.save_overlay(name, r["image"][z].cpu().numpy(), r["seg"][z].cpu().numpy(), ref)
                self._overlays_written += 1

    # ------------------------------------------------------------------ hooks
    def on_test_epoch_start(self) -> None:
        """Fresh text cache (the weights may have changed since the last run), then the base's."""
        self._clear_text_cache()
        super().on_test_epoch_start()

    def on_native_test_epoch_start(self) -> None:
        """Start empty tables."""
        self.configure_metrics()

    def on_predict_epoch_start(self) -> None:
        """Check the output folder, start counting overlays, fresh text cache."""
        super().on_predict_epoch_start()
        self._clear_text_cache()
        self.configure_metrics()

    def on_native_test_epoch_end(self) -> None:
        """Gather every rank's rows; rank zero writes the tables."""
        for table in (self.class_table, self.case_table):
            table.rows = self.gather_rows(table.rows)
        if self.trainer.is_global_zero and len(self.class_table):
            out = self.output_dir
            self.class_table.write(out, "test_classes")
            self.case_table.write(out, "test_cases")
            rows = [[r["case"], r["class_name"], r["dsc"], r["nsd"]] for r in self.class_table.rows]
            log_table(self.trainer.loggers, "test/classes", ["case", "class", "dsc", "nsd"], rows)
            rank_zero_info(f"\nSegVol per class ({out}):\n{self.class_table.to_markdown()}")
