"""``predict`` for every promptable method: prompts without scores, and the files written.

A volume is segmented from user prompts (a clicks file, :func:`user_prompts`) or from the test
protocol's prompts drawn from its label (:func:`protocol_prediction`); :class:`PredictionWriter`
writes the label map where the input came from and the overlays of the first cases.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from segfm.data.io.clicks_file import ClassClicks, read_clicks_file
from segfm.data.io.grid_clicks import case_clicks_on_grid
from segfm.evaluation.image_logging import log_image
from segfm.evaluation.interactive import ClassPrompt, Segmenter, case_boxes, run_interactive
from segfm.evaluation.options import Evaluation, Protocol
from segfm.evaluation.overlay import overlay, save_png
from segfm.evaluation.writers import write_prediction


def user_prompts(clicks: Mapping[int, ClassClicks]) -> dict[int, ClassPrompt]:
    """Prompts of a clicks file (on the volume's grid) as the interactive interface takes them.

    A box ``(z0, y0, x0, z1, y1, x1)`` becomes the CVPR box of that cuboid (its middle slice
    ``(z0 + z1) // 2``).
    """
    prompts = {}
    for c, given in clicks.items():
        box = None
        if given.box is not None:
            z0, y0, x0, z1, y1, x1 = (int(v) for v in given.box)
            box = {"z_min": z0, "z_max": z1, "z_mid": (z0 + z1) // 2}
            box |= {"z_mid_x_min": x0, "z_mid_y_min": y0, "z_mid_x_max": x1, "z_mid_y_max": y1}
        fg = [tuple(int(v) for v in p) for p in given.fg]
        bg = [tuple(int(v) for v in p) for p in given.bg]
        prompts[int(c)] = ClassPrompt(box=box, fg=fg, bg=bg)
    return prompts


class ClicksFile:
    """The prompts of a clicks file, case by case, on the grid of the volumes a method sees.

    Args:
        path: The JSON file (:mod:`segfm.data.io.clicks_file`); read at the first case.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._cases: dict[str, dict[str, ClassClicks]] | None = None

    def prompts(
        self,
        case_id: str,
        classes: Mapping[int, Any],
        meta: Mapping[str, Any],
        shape: Sequence[int],
    ) -> dict[int, ClassPrompt] | None:
        """A case's prompts by class id, or None when the file does not list the case.

        Args:
            case_id: The case.
            classes: Class infos by id (class names in the file resolve through them).
            meta: The case's metadata (``source_affine`` and ``affine`` map the points).
            shape: Shape ``(z, y, x)`` of the volume.

        Raises:
            DataError: If a class is unknown or a point lands outside the volume.
        """
        if self._cases is None:
            self._cases = read_clicks_file(self.path)
        if case_id not in self._cases:
            return None
        names = {int(c): info.name for c, info in classes.items()}
        where = f"{self.path}: case {case_id!r}"
        moved = case_clicks_on_grid(self._cases[case_id], names, meta, shape, where)
        return user_prompts(moved)


def protocol_prediction(
    segment: Segmenter,
    image: Tensor,
    label: Tensor,
    spacing: Sequence[float],
    protocol: Protocol,
    evaluation: Evaluation,
    meta: Mapping[str, Any] | None = None,
) -> Tensor:
    """The last prediction of the interactive protocol on one volume (prompts from ``label``).

    Args:
        segment: The method's interactive segmenter.
        image: Intensities ``[D, H, W]``.
        label: Reference label map ``[D, H, W]`` the boxes and clicks are drawn from.
        spacing: Voxel size in mm.
        protocol: Clicks and whether a box step comes first.
        evaluation: Click rule, seed, NSD tolerance and ``boxes_from_mask``.
        meta: The case's metadata (its ``boxes``; see
            :func:`segfm.evaluation.interactive.case_boxes`). None: boxes from ``label``.

    Returns:
        Label map ``[D, H, W]`` on ``image``'s device.
    """
    box_only = protocol.box and protocol.clicks == 0
    boxes = case_boxes(label, meta, evaluation.boxes_from_mask, box_only)
    result = run_interactive(
        segment,
        image,
        label,
        spacing,
        boxes,
        num_clicks=protocol.clicks,
        tolerance=evaluation.nsd_tolerance,
        seed=evaluation.seed,
        box=protocol.box,
        click_rule=evaluation.click_rule,
    )
    return torch.as_tensor(result.final, device=image.device)


class PredictionWriter:
    """Writes predicted volumes and the overlays of the first ``num_overlays`` cases.

    Args:
        output_dir: Folder of ``predictions/`` and ``overlays/``.
        save_predictions: Write the label maps.
        num_overlays: Cases with an overlay picture.
    """

    def __init__(self, output_dir: str | Path, save_predictions: bool, num_overlays: int) -> None:
        self.output_dir = Path(output_dir)
        self.save_predictions = save_predictions
        self.num_overlays = num_overlays
        self.overlays_written = 0

    def write(
        self,
        case_id: str,
        seg: Tensor,
        image: Tensor,
        label: Tensor | None,
        spacing: Sequence[float],
        meta: dict[str, Any],
        classes: Mapping[int, Any],
        loggers: Iterable[Any] = (),
        step: int = 0,
        overlays: bool = True,
    ) -> None:
        """Write one case: its label map and, while overlays are left, its overlay.

        Args:
            case_id: The case name.
            seg: Label map ``[D, H, W]``.
            image: Intensities ``[D, H, W]``.
            label: Reference label map, or None.
            spacing: Voxel size in mm.
            meta: The sample's ``meta`` (where the input came from).
            classes: Class infos by id (names for the legend).
            loggers: Loggers the overlay goes to.
            step: Logger step.
            overlays: Whether this process writes pictures (rank zero only).
        """
        array = seg.cpu().numpy()
        if self.save_predictions:
            write_prediction(self.output_dir / "predictions", case_id, array, meta, spacing)
        if self.overlays_written >= self.num_overlays:
            return
        shown = label if label is not None and bool((label > 0).any()) else seg
        if not bool((shown > 0).any()):
            return
        self.overlays_written += 1
        if not overlays:
            return
        z = int((shown > 0).flatten(1).sum(1).argmax())
        names = {int(c): info.name for c, info in classes.items()}
        reference = None if label is None else label[z].cpu().numpy()
        title = f"{case_id}  slice {z}"
        picture = overlay(image[z].float().cpu().numpy(), array[z], reference, names, title)
        name = f"{case_id.replace('/', '_')}_z{z:03d}"
        save_png(picture, self.output_dir / "overlays" / f"{name}.png")
        log_image(loggers, f"overlays/{name}", picture, step=step)
