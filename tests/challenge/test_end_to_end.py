"""Export -> predict.sh in fresh processes under the official loops = ``segfm test``, per method.

Each method is a tiny network with seeded random weights, saved as a Lightning checkpoint;
``segfm export --format challenge`` writes its build context, ``segfm challenge-eval`` runs the
official loop against its ``predict.sh`` (every step a new process), and the scores must equal
those of the interactive (or text) protocol that ``segfm test`` runs in one process on the same
npz cases with the same weights.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from jsonargparse import ArgumentParser

from data_tools.challenge_cases import split_cases
from data_tools.synthetic_npz import INSTANCE, SEMANTIC, make_dataset
from data_tools.tiny_clip import write_tiny_clip
from segfm.challenge.driver import DriverOptions, evaluate_submission
from segfm.cli import main
from segfm.data import NpzDataModule
from segfm.methods.base import BaseTask

INTERACTIVE = ["dsc_auc", "nsd_auc", "dsc_final", "nsd_final"] + [
    f"{m}_{k}" for m in ("dsc", "nsd") for k in range(1, 7)
]
TEXT = ["dsc", "nsd", "f1", "dsc_tp"]


@pytest.fixture(autouse=True)
def one_thread(monkeypatch: pytest.MonkeyPatch):
    """One thread here and in predict.sh's processes: the same floating-point sums."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("SEGFM_NUM_THREADS", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One generated case per dataset, with boxes, and a copy whose CT case has no boxes."""
    tmp = tmp_path_factory.mktemp("challenge")
    boxed = make_dataset(tmp / "npz", num_cases=1, num_test=1, seed=3)
    bare = tmp / "npz_no_boxes"
    shutil.copytree(boxed, bare)
    case = bare / SEMANTIC / "test" / f"{SEMANTIC}_t00.npz"
    with np.load(case, allow_pickle=True) as npz:
        arrays = {k: npz[k] for k in npz.files if k != "boxes"}
    np.savez_compressed(case, **arrays)
    return {
        "boxed": boxed,
        "bare": bare,
        "boxed_cases": split_cases(boxed, tmp / "cases"),
        "bare_cases": split_cases(boxed, tmp / "cases_no_boxes", no_boxes=(f"{SEMANTIC}_t00",)),
        "clip": write_tiny_clip(tmp / "clip"),
    }


def _method(class_path: str, init_args: dict[str, Any]) -> BaseTask:
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(BaseTask, "model", required=True)
    cfg = parser.parse_object({"model": {"class_path": class_path, "init_args": init_args}})
    return parser.instantiate(cfg).model


def _checkpoint(tmp: Path, class_path: str, init_args: dict[str, Any]) -> Path:
    """A Lightning-style checkpoint of seeded random weights, as segfm fit writes one."""
    torch.manual_seed(0)
    method = _method(class_path, init_args)
    path = tmp / "model.ckpt"
    hparams = dict(method.hparams) | {"_class_path": class_path}
    torch.save({"state_dict": method.state_dict(), "hyper_parameters": hparams}, path)
    return path


def _segfm_test(
    tmp: Path, root: Path, ckpt: Path, class_path: str, init_args: dict, protocol: str
) -> list[dict[str, Any]]:
    """The protocol as ``segfm test`` runs it in one process: the harness's case table."""
    evaluation = {"clicks": 5, "num_overlays": 0, "save_predictions": False}
    out = tmp / f"test_{protocol}"
    method = _method(
        class_path,
        init_args | {"protocol": protocol, "evaluation": evaluation, "output_dir": str(out)},
    )
    method.load_state_dict(torch.load(ckpt, weights_only=False)["state_dict"])
    datasets = [SEMANTIC] if protocol == "interactive" else None  # the cases with boxes
    data = NpzDataModule(str(root), datasets, num_workers=0, val_fraction=0.0, patch_size=32)
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    trainer.test(method, datamodule=data, verbose=False)
    assert (out / f"protocol_{protocol}_cases.csv").is_file()
    return method._harness.cases.rows  # unrounded, as the driver's rows


def _exported(tmp: Path, ckpt: Path) -> Path:
    main(
        ["export", "--ckpt_path", str(ckpt), "--format", "challenge", "--output", str(tmp / "sub")]
    )
    return tmp / "sub"


def _assert_same(driver_rows: list[dict], test_rows: list[dict], metrics: list[str]) -> None:
    by_case = {r["case"].split("/")[-1]: r for r in test_rows}
    assert len(driver_rows) == len(test_rows) > 0
    for row in driver_rows:
        expected = by_case[Path(row["case"]).stem]
        for m in metrics:
            assert float(row[m]) == pytest.approx(float(expected[m]), abs=1e-6, nan_ok=True), (
                row["case"],
                m,
            )


INTERACTIVE_METHODS = {
    "medsam": ("segfm.methods.MedSAM", {"arch": "tiny", "image_size": 64}, "boxed"),
    "sam_med3d": ("segfm.methods.SAMMed3D", {"arch": "tiny", "image_size": 32}, "bare"),
    "segvol": (
        "segfm.methods.SegVol",
        {"arch": "tiny", "roi_size": [16, 32, 32], "normalize": "foreground"},
        "boxed",
    ),
}


@pytest.mark.parametrize("name", list(INTERACTIVE_METHODS))
def test_interactive_submission_scores_as_segfm_test(
    name: str, roots: dict[str, Path], tmp_path: Path
) -> None:
    class_path, init_args, kind = INTERACTIVE_METHODS[name]
    if name == "segvol":
        init_args = init_args | {"clip_dir": str(roots["clip"])}
    ckpt = _checkpoint(tmp_path, class_path, init_args)
    submission = _exported(tmp_path, ckpt)
    assert (submission / "Dockerfile").is_file() and (submission / "predict.sh").is_file()
    options = DriverOptions(python=sys.executable)
    tables = evaluate_submission(
        submission,
        roots[f"{kind}_cases"] / "interactive",
        tmp_path / "eval",
        roots[f"{kind}_cases"] / "gts",
        "interactive",
        options,
    )
    rows = tables["interactive"].rows
    expected = _segfm_test(tmp_path, roots[kind], ckpt, class_path, init_args, "interactive")
    _assert_same(rows, expected, INTERACTIVE)
    logs = (tmp_path / "eval" / "work" / "logs" / f"{SEMANTIC}_t00.log").read_text()
    runs = logs.count("start-up")
    assert runs == (5 if kind == "bare" else 6)  # a case without boxes: one run fewer
    assert logs.count("state reused") == 5 if kind == "boxed" else logs.count("state reused") == 4
    with np.load(tmp_path / "eval" / "predictions" / f"{SEMANTIC}_t00.npz") as npz:
        assert npz["all_segs"].shape[0] == runs and npz["segs"].dtype == np.uint8
    if kind == "bare":
        assert float(rows[0]["dsc_1"]) == 0.0 and float(rows[0]["seconds_1"]) == 0.0


TEXT_METHODS = {
    "segvol": (
        "segfm.methods.SegVol",
        {"arch": "tiny", "roi_size": [16, 32, 32], "normalize": "foreground"},
    ),
    "biomedparse": ("segfm.methods.BiomedParse", {"arch": "tiny", "image_size": 64}),
}


@pytest.mark.parametrize("name", list(TEXT_METHODS))
def test_text_submission_scores_as_segfm_test(
    name: str, roots: dict[str, Path], tmp_path: Path
) -> None:
    class_path, init_args = TEXT_METHODS[name]
    if name == "segvol":
        init_args = init_args | {"clip_dir": str(roots["clip"])}
    ckpt = _checkpoint(tmp_path, class_path, init_args)
    submission = _exported(tmp_path, ckpt)
    cases = roots["boxed_cases"]
    tables = evaluate_submission(
        submission,
        cases / "text",
        tmp_path / "eval",
        cases / "gts",
        "text",
        DriverOptions(python=sys.executable),
    )
    rows = tables["text"].rows
    assert {Path(r["case"]).stem for r in rows} == {f"{SEMANTIC}_t00", f"{INSTANCE}_t00"}
    expected = _segfm_test(tmp_path, roots["boxed"], ckpt, class_path, init_args, "text")
    _assert_same(rows, expected, TEXT)
