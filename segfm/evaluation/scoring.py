"""Offline scoring of saved predictions against ground truth, file by file.

Cases are paired by name: ``<case>.npz`` predictions (``segs``, as submitted to the CVPR 2025
challenges) against ``<case>.npz`` ground truth (``gts``), or ``<case>.nii.gz``/``<case>.nii``
predictions against NIfTI ground truth. A prediction npz that also holds ``all_segs`` (the
interactive evaluator's intermediate predictions) is scored step by step as well. Voxel sizes
come from the ground truth (``spacing`` of the npz, or of the test image npz of the same name;
the NIfTI header) in array axis order.

Reading never runs pickled code: the challenge stores ``text_prompts`` as a pickled dict, which
is read with an unpickler that admits only numpy's array and scalar constructors.
"""

from __future__ import annotations

import io
import json
import math
import pickle
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from segfm.data.io.nifti import read_nifti
from segfm.errors import DataError
from segfm.evaluation.curves import AUC_STEPS, summarise_steps
from segfm.evaluation.instances import instance_f1
from segfm.evaluation.metrics import interactive_case_scores, semantic_case_scores

Protocol = Literal["auto", "interactive", "semantic", "instance"]
NPZ, NIFTI = (".npz",), (".nii.gz", ".nii")
#: numpy globals an object array of plain Python values needs to be unpickled
_NUMPY_GLOBALS = {
    (module, name)
    for module in ("numpy.core.multiarray", "numpy._core.multiarray")
    for name in ("_reconstruct", "scalar")
} | {("numpy", "ndarray"), ("numpy", "dtype")}
_READ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)
_TORCH_LABEL_TYPES = (np.uint8, np.int8, np.int16, np.int32, np.int64)


@dataclass(frozen=True)
class CasePair:
    """One ground-truth case and the files that go with it.

    Attributes:
        name: Case name (file name without its suffix).
        gt: Ground-truth file.
        pred: Prediction file, None when the prediction folder has none.
        image: Test image npz of the same name (spacing, text prompts), or None.
    """

    name: str
    gt: Path
    pred: Path | None
    image: Path | None = None


@dataclass(frozen=True)
class LoadedCase:
    """Arrays of one case, ready to score.

    Attributes:
        pred: Predicted label map (all zeros when the prediction is missing).
        gt: Reference label map of the same shape.
        spacing: Voxel size in mm in array axis order, or None when no file gives it.
        prompts: The case's ``text_prompts`` dict (text track), or None.
        all_segs: The prediction after every interactive step ``[steps, *S]`` (the npz's
            ``all_segs``), or None.
    """

    pred: np.ndarray
    gt: np.ndarray
    spacing: tuple[float, ...] | None
    prompts: dict[str, Any] | None
    all_segs: np.ndarray | None = None


def _split_name(path: Path) -> tuple[str, str] | None:
    for suffix in (*NPZ, *NIFTI):
        if path.name.endswith(suffix) and len(path.name) > len(suffix):
            return path.name[: -len(suffix)], suffix
    return None


def _index(folder: Path, option: str) -> dict[str, Path]:
    if not folder.is_dir():
        msg = f"{folder} does not exist or is not a folder; check {option}"
        raise DataError(msg)
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        split = _split_name(path)
        if split is None or path.name.startswith("."):
            continue
        if split[0] in found:
            msg = f"{found[split[0]]} and {path} are the same case {split[0]!r}; keep one of them"
            raise DataError(msg)
        found[split[0]] = path
    return found


def _same_kind(a: Path, b: Path) -> bool:
    return (a.suffix == ".npz") == (b.suffix == ".npz")


def pair_cases(
    pred: str | Path, gt: str | Path, images: str | Path | None = None
) -> tuple[list[CasePair], list[Path]]:
    """Pair prediction and ground-truth files by case name.

    Args:
        pred: Folder of predictions.
        gt: Folder of ground truth.
        images: Optional folder of the test image npz files.

    Returns:
        One pair per ground-truth file (``pred`` None where missing), and the predictions that
        have no ground truth.

    Raises:
        DataError: If a folder is missing, the ground-truth folder has no case, or no prediction
            matches any ground-truth name.
    """
    gts = _index(Path(gt), "--gt")
    preds = _index(Path(pred), "--pred")
    imgs = _index(Path(images), "--images") if images is not None else {}
    if not gts:
        msg = f"{gt} has no .npz, .nii.gz or .nii files; pass the folder of the ground truth"
        raise DataError(msg)
    pairs = []
    for name, path in gts.items():
        p = preds.get(name)
        p = p if p is not None and _same_kind(p, path) else None
        pairs.append(CasePair(name, path, p, imgs.get(name)))
    used = {p.pred for p in pairs}
    orphans = [p for p in preds.values() if p not in used]
    if all(p.pred is None for p in pairs):
        msg = (
            f"no prediction in {pred} matches a ground-truth case of {gt}; name each prediction "
            "like its ground truth (<case>.npz with segs, or <case>.nii.gz)"
        )
        raise DataError(msg)
    return pairs, orphans


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _NUMPY_GLOBALS:
            return super().find_class(module, name)
        msg = f"refusing to unpickle {module}.{name}"
        raise pickle.UnpicklingError(msg)


def _read_object(path: Path, key: str) -> Any:
    """A pickled (object) array of an npz, unpickled without running code; None if absent."""
    headers = {
        (1, 0): np.lib.format.read_array_header_1_0,
        (2, 0): np.lib.format.read_array_header_2_0,
    }
    try:
        with zipfile.ZipFile(path) as zf:
            if f"{key}.npy" not in zf.namelist():
                return None
            raw = io.BytesIO(zf.read(f"{key}.npy"))
        version = np.lib.format.read_magic(raw)
        if version not in headers:
            msg = f"npy format version {version} is not supported"
            raise ValueError(msg)
        _, _, dtype = headers[version](raw)
        if dtype.hasobject:  # the header is read: the rest is the pickled array
            value = _NumpyOnlyUnpickler(raw).load()
        else:
            raw.seek(0)
            value = np.lib.format.read_array(raw, allow_pickle=False)
    except (*_READ_ERRORS, pickle.UnpicklingError, TypeError, AttributeError, KeyError) as e:
        msg = f"cannot read {key} of {path} ({e}); re-export the file with plain dicts and strings"
        raise DataError(msg) from e
    value = value.item() if isinstance(value, np.ndarray) and value.ndim == 0 else value
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def _npz_array(path: Path, key: str, required: bool = True) -> np.ndarray | None:
    try:
        with np.load(path, allow_pickle=False) as npz:
            files = list(npz.files)
            array = npz[key] if key in files else None
    except _READ_ERRORS as e:
        msg = f"cannot read {key!r} of {path} ({e}); re-export it as a numeric npz array"
        raise DataError(msg) from e
    if array is None and required:
        msg = (
            f"{path} has no {key!r} array (it has {', '.join(files) or 'none'}); "
            f"save it with np.savez_compressed(path, {key}=...)"
        )
        raise DataError(msg)
    return array


def _npz_labels(path: Path, key: str) -> np.ndarray:
    array = _npz_array(path, key)
    assert array is not None  # required arrays raise DataError when absent
    return _labels(array)


def _labels(array: np.ndarray) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype == np.bool_:
        return array.astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):  # NIfTI labels stored as floats
        return np.rint(array).astype(np.int64)
    return array if array.dtype in _TORCH_LABEL_TYPES else array.astype(np.int64)


def _check_shapes(pair: CasePair, pred: np.ndarray, gt: np.ndarray) -> None:
    if pred.shape != gt.shape:
        msg = (
            f"{pair.pred}: prediction shape {pred.shape} differs from the ground truth's "
            f"{gt.shape} ({pair.gt}); predict on the full image grid"
        )
        raise DataError(msg)


def _load_npz(pair: CasePair) -> LoadedCase:
    gt = _npz_labels(pair.gt, "gts")
    pred = _npz_labels(pair.pred, "segs") if pair.pred else np.zeros_like(gt)
    _check_shapes(pair, pred, gt)
    all_segs = _npz_array(pair.pred, "all_segs", required=False) if pair.pred else None
    if all_segs is not None:
        all_segs = _labels(all_segs)
        if all_segs.ndim != gt.ndim + 1 or all_segs.shape[1:] != gt.shape or not len(all_segs):
            msg = (
                f"{pair.pred}: all_segs has shape {all_segs.shape}, expected (steps, *"
                f"{gt.shape}) like the ground truth ({pair.gt}); save the step predictions "
                "stacked, or leave all_segs out"
            )
            raise DataError(msg)
    spacing = _npz_array(pair.gt, "spacing", required=False)
    prompts = _read_object(pair.gt, "text_prompts")
    if pair.image is not None:
        if spacing is None:
            spacing = _npz_array(pair.image, "spacing", required=False)
        if prompts is None:
            prompts = _read_object(pair.image, "text_prompts")
    spacing_mm = None if spacing is None else tuple(float(s) for s in np.ravel(spacing))
    prompts = prompts if isinstance(prompts, dict) else None
    return LoadedCase(pred, gt, spacing_mm, prompts, all_segs)


def _load_nifti(pair: CasePair) -> LoadedCase:
    gt = read_nifti(pair.gt)
    if pair.pred is None:
        return LoadedCase(np.zeros_like(_labels(gt.array)), _labels(gt.array), gt.spacing, None)
    pred = read_nifti(pair.pred)
    _check_shapes(pair, pred.array, gt.array)
    if not np.allclose(pred.affine, gt.affine, rtol=0.0, atol=1e-3):
        warnings.warn(
            f"{pair.pred}: affine differs from {pair.gt} by more than 1e-3; scored voxel by "
            "voxel on the ground truth's grid, so check the prediction was not reoriented",
            stacklevel=2,
        )
    return LoadedCase(_labels(pred.array), _labels(gt.array), gt.spacing, None)


def load_case(pair: CasePair) -> LoadedCase:
    """Read the arrays of one case (an all-zero prediction when it is missing).

    Raises:
        DataError: If a file lacks its array, cannot be read, or the shapes differ.
    """
    return _load_npz(pair) if pair.gt.suffix == ".npz" else _load_nifti(pair)


def resolve_protocol(protocol: Protocol, prompts: dict[str, Any] | None) -> str:
    """The protocol of one case.

    ``auto`` picks ``instance`` when the text prompts say ``instance_label`` 1, ``semantic`` for
    other text-track cases (text prompts present), and ``interactive`` otherwise.
    """
    if protocol != "auto":
        return protocol
    if prompts is None:
        return "interactive"
    return "instance" if int(prompts.get("instance_label", 0)) == 1 else "semantic"


def _prompt_classes(prompts: dict[str, Any] | None, gt: np.ndarray) -> list[int] | None:
    if prompts is None:
        return None
    ids = sorted(int(k) for k in prompts if str(k).lstrip("-").isdigit())
    present = set(np.unique(gt).tolist())
    return [c for c in ids if c in present]


def score_case(
    case: LoadedCase,
    protocol: str,
    tolerance: float = 2.0,
    iou_threshold: float = 0.5,
    source: Path | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Score one loaded case.

    Args:
        case: The arrays.
        protocol: ``interactive`` (NSD only when the case-mean DSC > 0.2), ``semantic`` (text
            track: DSC and NSD of the prompted classes present in the ground truth) or
            ``instance`` (F1 at ``iou_threshold`` and DSC over the matched instances).
        tolerance: NSD tolerance in mm.
        iou_threshold: Smallest IoU of a matched instance.
        source: Ground-truth file, named in errors.

    Returns:
        The case's scores (``classes``, ``dsc``, ``nsd``; or the counts and scores of
        :func:`~segfm.evaluation.instances.instance_f1` for instance cases) and one row per class
        (``class_id``, ``class_name``, ``dsc``, ``nsd``; none for instance cases).

    Raises:
        DataError: If a semantic protocol needs a spacing that no file gave.
    """
    if protocol == "instance":
        return instance_f1(case.pred, case.gt, iou_threshold), []
    if case.spacing is None or len(case.spacing) != case.gt.ndim:
        msg = (
            f"{source}: no {case.gt.ndim}-value spacing in the ground truth (got {case.spacing}); "
            "pass --images with the folder of the test npz files, which carry spacing"
        )
        raise DataError(msg)
    fn = interactive_case_scores if protocol == "interactive" else semantic_case_scores
    classes = None if protocol == "interactive" else _prompt_classes(case.prompts, case.gt)
    s = fn(case.pred, case.gt, case.spacing, classes, tolerance)
    names = case.prompts or {}
    rows = [
        {"class_id": c, "class_name": str(names.get(str(c), names.get(c, ""))), **v}
        for c, v in s["classes"].items()
    ]
    scores = {"classes": len(rows), "dsc": s["dsc"], "nsd": s["nsd"]}
    if protocol == "interactive" and case.all_segs is not None:
        scores |= step_scores(
            case.all_segs, case.gt, case.spacing, tolerance, final=case.pred, at_final=s
        )
    return scores, rows


#: steps of the challenge's interactive loop (the box, then 5 clicks)
INTERACTIVE_STEPS = 6


def step_scores(
    all_segs: np.ndarray,
    gt: np.ndarray,
    spacing: tuple[float, ...],
    tolerance: float = 2.0,
    final: np.ndarray | None = None,
    at_final: dict[str, Any] | None = None,
) -> dict[str, float]:
    """Per-step DSC / NSD, AUC and final values of an interactive run, as ``CVPR25_iter_eval.py``.

    Every step is scored with the interactive rule (NSD only when the case-mean DSC > 0.2).
    ``all_segs`` of 5 entries is a case without boxes: the official loop skips its box step
    and scores it DSC = NSD = 0, so step 1 is 0 and the entries are steps 2..6. Any other count
    is steps 1..n. ``dsc_auc`` / ``nsd_auc`` are the trapezoid areas over the last five steps at
    x = 0..4 (``cumulative_trapezoid(dscs[-5:], np.arange(5))[-1]``; NaN with fewer than two
    steps); ``dsc_final`` / ``nsd_final`` are the last step's.

    Args:
        all_segs: The predictions ``[steps, *S]``.
        gt: Reference label map ``[*S]``.
        spacing: Voxel size in mm.
        tolerance: NSD tolerance in mm.
        final: The case's ``segs``; with ``at_final`` (its scores) a last step equal to it is
            not scored again.
        at_final: The scores of ``final`` (``dsc``, ``nsd``).

    Returns:
        ``dsc_auc``, ``nsd_auc``, ``dsc_final``, ``nsd_final``, then ``dsc_<k>`` and ``nsd_<k>``
        for every step ``k`` from 1.
    """
    dscs: list[float] = []
    nsds: list[float] = []
    if len(all_segs) == INTERACTIVE_STEPS - 1:  # no boxes: the skipped box step scores 0
        dscs.append(0.0)
        nsds.append(0.0)
    last = len(all_segs) - 1
    for k, seg in enumerate(all_segs):
        reuse = k == last and at_final is not None and final is not None
        if reuse and np.array_equal(seg, final):
            s = at_final
        else:
            s = interactive_case_scores(seg, gt, spacing, None, tolerance)
        dscs.append(float(s["dsc"]))
        nsds.append(float(s["nsd"]))
    out: dict[str, float] = {}
    for name, values in (("dsc", dscs), ("nsd", nsds)):
        summary = summarise_steps(values, auc_steps=AUC_STEPS)
        out[f"{name}_auc"] = summary["auc"] if len(values) > 1 else math.nan
        out[f"{name}_final"] = summary["final"]
    for name, values in (("dsc", dscs), ("nsd", nsds)):
        out |= {f"{name}_{k}": v for k, v in enumerate(values, start=1)}
    return out
