"""One test harness for every promptable method: runs a protocol per case and writes the report.

A method hands over its segmenter (see :data:`segfm.evaluation.interactive.Segmenter` and
:data:`segfm.evaluation.text.TextSegmenter`); the harness draws the prompts, scores every step,
and writes, under the output folder:

- ``protocol_<name>_cases.csv`` (one row per case) with ``_summary.md`` / ``_summary.json``;
- ``protocol_<name>_classes.csv`` (one row per case and class);
- ``protocol_interactive_steps.csv`` (one row per case and step);
- ``predictions/``: npz in the challenge's submission layout for npz inputs (``segs`` and
  ``all_segs``, one entry per prediction made: 5 for a case without boxes), NIfTI on the source
  grid otherwise;
- ``overlays/``: the worst and the best case (reference and prediction on the slice where the
  reference is largest, with the class legend, the case and its score);

and sends the tables and the overlays to the active loggers (a W&B table when W&B is on).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from torch import Tensor

from segfm.evaluation.image_logging import log_image, log_table
from segfm.evaluation.interactive import Segmenter, case_boxes, run_interactive
from segfm.evaluation.options import ClickRule
from segfm.evaluation.overlay import overlay, save_png
from segfm.evaluation.table import CaseTable
from segfm.evaluation.text import TextSegmenter, run_text
from segfm.evaluation.writers import write_prediction

Protocol = Literal["interactive", "text"]


class ProtocolHarness:
    """Runs one evaluation protocol over the cases of a test epoch.

    Args:
        protocol: ``interactive`` (box, then clicks) or ``text``.
        output_dir: Folder of the tables, predictions and overlays.
        num_clicks: Click steps of the interactive protocol (0: the box alone).
        tolerance: NSD tolerance in mm.
        seed: Seed of the click rule.
        box: Start the interactive protocol with the boxes; False: clicks only.
        click_rule: ``center`` (CVPR 2025) or ``random`` (SAM-Med3D's training rule).
        boxes_from_mask: Give classes without a box in the data (``meta["boxes"]``) the box of
            their reference mask; False: never (a case without boxes skips the box step, as in
            the challenge); None (auto): only cases whose ``meta`` has no ``boxes`` key (formats
            that never carry boxes) and box-only runs (``num_clicks`` 0), see
            :func:`segfm.evaluation.interactive.case_boxes`.
        save_predictions: Write the predictions.
        num_overlays: Overlays of the worst and best cases (0, 1 = worst, 2 = worst and best).
    """

    def __init__(
        self,
        protocol: Protocol,
        output_dir: str | Path,
        num_clicks: int = 5,
        tolerance: float = 2.0,
        seed: int = 42,
        boxes_from_mask: bool | None = None,
        save_predictions: bool = True,
        num_overlays: int = 2,
        box: bool = True,
        click_rule: ClickRule = "center",
    ) -> None:
        if protocol not in ("interactive", "text"):
            msg = f"unknown protocol {protocol!r}; choose interactive or text"
            raise ValueError(msg)
        if protocol == "interactive" and not box and num_clicks < 1:
            msg = "an interactive protocol without boxes needs clicks >= 1"
            raise ValueError(msg)
        self.protocol = protocol
        self.output_dir = Path(output_dir)
        self.num_clicks = num_clicks
        self.tolerance = tolerance
        self.seed = seed
        self.boxes_from_mask = boxes_from_mask
        self.save_predictions = save_predictions
        self.num_overlays = num_overlays
        self.box = box
        self.click_rule = click_rule
        self.reset()

    def reset(self) -> None:
        """Start a new epoch: empty tables, no overlay candidates."""
        if self.protocol == "interactive":
            steps = range(1, self.num_clicks + 1 + int(self.box))
            metrics = ["dsc_auc", "nsd_auc", "dsc_final", "nsd_final", "seconds"]
            metrics += [f"dsc_{k}" for k in steps] + [f"nsd_{k}" for k in steps]
        else:
            metrics = ["dsc", "nsd", "f1", "dsc_tp", "seconds"]
        self.cases = CaseTable(metrics)
        self.classes = CaseTable(["dsc", "nsd"])
        self.steps = CaseTable(["dsc", "nsd", "seconds"])
        self._pictures: list[tuple[float, str, np.ndarray]] = []
        self.unscored: list[str] = []

    # ---------------------------------------------------------------- per case
    def run_batch(
        self, batch: dict[str, Any], segment: Segmenter | TextSegmenter
    ) -> list[dict[str, float]]:
        """Run the protocol on every case of a batch.

        Returns:
            Per case its headline ``score`` (the final DSC, the DSC, or the F1 of an instance
            case) and, for the interactive protocol, the final ``dsc`` and ``nsd``.
        """
        if batch["image"].ndim != 5:
            msg = (
                f"the {self.protocol} protocol runs on volumes [B, 1, D, H, W], got "
                f"{tuple(batch['image'].shape)}; use a data module whose test split yields volumes"
            )
            raise ValueError(msg)
        if "label" not in batch:  # nothing to score (or to place clicks) against
            names = [str(m.get("case_id", "?")) for m in batch["meta"]]
            self.unscored += names
            warnings.warn(
                f"{self.protocol} protocol: {names} have no reference mask and are skipped; "
                "give evaluation masks (e.g. test_mask/) to score them",
                stacklevel=2,
            )
            return []
        scores = []
        for i in range(batch["image"].shape[0]):
            image, label = batch["image"][i, 0], batch["label"][i, 0]
            meta = batch["meta"][i]
            classes = batch.get("classes", [{}] * (i + 1))[i]
            spacing = [float(v) for v in batch["spacing"][i]]
            case_id = str(meta.get("case_id", f"case_{len(self.cases)}"))
            if self.protocol == "interactive":
                score = self._interactive(segment, case_id, image, label, spacing, meta, classes)  # type: ignore[arg-type]
            else:
                score = self._text(segment, case_id, image, label, spacing, meta, classes)  # type: ignore[arg-type]
            scores.append(score)
        return scores

    def _interactive(
        self,
        segment: Segmenter,
        case_id: str,
        image: Tensor,
        label: Tensor,
        spacing: Sequence[float],
        meta: dict[str, Any],
        classes: dict[int, Any],
    ) -> dict[str, float]:
        box_only = self.box and self.num_clicks == 0
        boxes = case_boxes(label, meta, self.boxes_from_mask, box_only)
        result = run_interactive(
            segment,
            image,
            label,
            spacing,
            boxes,
            num_clicks=self.num_clicks,
            tolerance=self.tolerance,
            seed=self.seed,
            box=self.box,
            click_rule=self.click_rule,
        )
        row: dict[str, Any] = {"case": case_id, "dataset": meta.get("dataset", "")}
        row["classes"] = len(result.prompts)
        row |= {k: v for k, v in result.summary.items()}
        for s in result.steps:
            row[f"dsc_{s['step']}"] = s["dsc"]
            row[f"nsd_{s['step']}"] = s["nsd"]
            self.steps.add(
                case=case_id,
                step=s["step"],
                prompt=s["prompt"],
                dsc=s["dsc"],
                nsd=s["nsd"],
                seconds=s["seconds"],
                skipped=s["skipped"],
                over_limit=s["over_limit"],
            )
        self.cases.add(**row)
        last = result.steps[-1]["classes"]
        for c, s in last.items():
            clicks = "".join("-" if o is None else o[0] for o in result.prompts[c].order)
            name = classes[c].name if c in classes else str(c)
            self.classes.add(
                case=case_id, class_id=c, class_name=name, dsc=s["dsc"], nsd=s["nsd"], clicks=clicks
            )
        final = result.final
        if self.save_predictions:
            all_segs = result.segs or None
            write_prediction(
                self.output_dir / "predictions", case_id, final, meta, spacing, all_segs
            )
        dsc, nsd = float(result.summary["dsc_final"]), float(result.summary["nsd_final"])
        self._keep_picture(dsc, "DSC", case_id, image, final, label, classes)
        return {"score": dsc, "dsc": dsc, "nsd": nsd}

    def _text(
        self,
        segment: TextSegmenter,
        case_id: str,
        image: Tensor,
        label: Tensor,
        spacing: Sequence[float],
        meta: dict[str, Any],
        classes: dict[int, Any],
    ) -> dict[str, float]:
        instance = bool(meta.get("instance", False))
        prompts = dict(meta.get("text_prompts") or {})
        given = bool(prompts)  # the data's prompts: all are segmented, as in the challenge
        if not prompts:  # the classes' canonical prompts
            prompts = {
                int(c): (info.prompts[0] if info.prompts else info.name)
                for c, info in classes.items()
            }
        if not prompts:
            msg = f"case {case_id!r} has no text prompts and no class names to prompt with"
            raise ValueError(msg)
        result = run_text(
            segment, image, label, spacing, prompts, instance, self.tolerance, meta, given
        )
        self.cases.add(
            case=case_id,
            dataset=meta.get("dataset", ""),
            instance=instance,
            dsc=result["dsc"],
            nsd=result["nsd"],
            f1=result["f1"],
            dsc_tp=result["dsc_tp"],
            seconds=result["seconds"],
        )
        for c, s in result["classes"].items():
            name = classes[c].name if c in classes else str(c)
            self.classes.add(
                case=case_id,
                class_id=c,
                class_name=name,
                prompt=prompts.get(c, ""),
                dsc=s["dsc"],
                nsd=s["nsd"],
            )
        if self.save_predictions:
            write_prediction(self.output_dir / "predictions", case_id, result["seg"], meta, spacing)
        score = float(result["f1"] if instance else result["dsc"])
        self._keep_picture(
            score, "F1" if instance else "DSC", case_id, image, result["seg"], label, classes
        )
        return {"score": score}

    def merge(self, gather: Callable[[list[dict[str, Any]]], list[dict[str, Any]]]) -> None:
        """Pool the results of every process (DDP) before :meth:`finish`.

        Args:
            gather: Returns the rows of every process for this process's rows (every process
                calls it the same number of times), e.g. ``BaseTask.gather_rows``.
        """
        for table in (self.cases, self.classes, self.steps):
            table.rows = gather(table.rows)
        self.unscored = [str(r["case"]) for r in gather([{"case": c} for c in self.unscored])]
        pictures = [r["picture"] for r in gather([{"picture": p} for p in self._pictures])]
        self._pictures = []
        for picture in pictures:
            self._add_picture(picture)

    def _add_picture(self, picture: tuple[float, str, np.ndarray]) -> None:
        """Keep ``picture`` if it is the worst or the best so far."""
        self._pictures.append(picture)
        self._pictures.sort(key=lambda p: p[0])
        if len(self._pictures) > 2:
            del self._pictures[1:-1]

    def _keep_picture(
        self,
        score: float,
        metric: str,
        case_id: str,
        image: Tensor,
        seg: np.ndarray,
        label: Tensor,
        classes: dict[int, Any],
    ) -> None:
        """Keep the overlay of the case if it is the worst or the best so far."""
        if self.num_overlays <= 0 or math.isnan(score):
            return
        ref = label.cpu().numpy()
        z = int((ref > 0).reshape(ref.shape[0], -1).sum(1).argmax())
        names = {int(c): info.name for c, info in classes.items()}
        title = f"{case_id}  slice {z}  {metric} {score:.3f}"
        picture = overlay(image[z].cpu().numpy(), np.asarray(seg)[z], ref[z], names, title)
        name = case_id.replace("/", "_")  # one flat folder of pictures
        self._add_picture((score, f"{name}_z{z:03d}", picture))

    # -------------------------------------------------------------- epoch end
    def finish(self, loggers: Iterable[Any] = (), step: int = 0) -> dict[str, Path]:
        """Write the tables and overlays, and send them to the loggers.

        Returns:
            The files written, by name.
        """
        written: dict[str, Path] = {}
        if not len(self.cases):
            return written
        stem = f"protocol_{self.protocol}"
        written |= {
            f"cases_{k}": v for k, v in self.cases.write(self.output_dir, f"{stem}_cases").items()
        }
        if len(self.classes):
            written |= {
                f"classes_{k}": v
                for k, v in self.classes.write(self.output_dir, f"{stem}_classes").items()
            }
        if len(self.steps):
            written |= {
                f"steps_{k}": v
                for k, v in self.steps.write(self.output_dir, f"{stem}_steps").items()
            }
        loggers = list(loggers)
        columns = list(self.cases.rows[0])
        log_table(
            loggers, f"test/{stem}", columns, [[r.get(c) for c in columns] for r in self.cases.rows]
        )
        if len(self.classes):
            rows = [[r["case"], r["class_name"], r["dsc"], r["nsd"]] for r in self.classes.rows]
            log_table(loggers, "test/classes", ["case", "class", "dsc", "nsd"], rows)
        labels = ["worst", "best"] if len(self._pictures) > 1 else ["worst"]
        for kind, (_, name, picture) in zip(labels, self._pictures, strict=False):
            if kind == "best" and self.num_overlays < 2:
                break
            path = save_png(picture, self.output_dir / "overlays" / f"{stem}_{kind}_{name}.png")
            written[f"overlay_{kind}"] = path
            log_image(loggers, f"overlays/{stem}_{kind}", picture, step=step)
        return written

    def summary_markdown(self) -> str:
        """The per-case table with its means, for the console."""
        if self.protocol == "interactive":
            columns = ["case", "classes", "dsc_auc", "nsd_auc", "dsc_final", "nsd_final", "seconds"]
        else:
            columns = ["case", "dsc", "nsd", "f1", "dsc_tp", "seconds"]
        table = self.cases.to_markdown(columns)
        if self.unscored:
            table += f"\n{len(self.unscored)} case(s) without a reference mask were skipped.\n"
        return table
