"""The protocol harness: tables, predictions, overlays and logger output, with scripted methods."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch

from segfm.evaluation.harness import ProtocolHarness
from segfm.sample import ClassInfo


class _Logger:
    def __init__(self) -> None:
        self.tables: dict[str, Any] = {}
        self.images: list[str] = []

    def log_table(self, key: str, columns: list[str], data: list[list[Any]]) -> None:
        self.tables[key] = (columns, data)

    def log_image(self, key: str, images: list[np.ndarray], step: int) -> None:
        self.images.append(key)


def _batch(case: str, label: torch.Tensor, **meta: Any) -> dict[str, Any]:
    return {
        "image": label[None, None].float(),
        "label": label[None, None],
        "spacing": torch.tensor([[2.0, 1.0, 1.0]]),
        "classes": [{1: ClassInfo("liver", ("liver", "the liver")), 2: ClassInfo("spleen")}],
        "meta": [{"case_id": case, "dataset": "D", **meta}],
    }


def _label(shift: int) -> torch.Tensor:
    label = torch.zeros(8, 10, 10, dtype=torch.long)
    label[2:6, 2:6, 2:6] = 1
    label[2:6, 6 + shift : 9, 6:9] = 2
    return label


def test_interactive_tables_predictions_overlays_and_loggers(tmp_path: Path) -> None:
    harness = ProtocolHarness("interactive", tmp_path, num_clicks=2)

    def oracle(image, spacing, prompts, previous):  # the reference, for the classes prompted
        ref = image.long()
        return torch.where(torch.isin(ref, torch.tensor(sorted(prompts))), ref, 0)

    def nothing(image, spacing, prompts, previous):
        return torch.zeros(image.shape, dtype=torch.long)

    affine = np.diag([-0.8, -0.8, 2.0, 1.0])
    good = harness.run_batch(_batch("good", _label(0), affine=affine), oracle)
    assert good == [{"score": 1.0, "dsc": 1.0, "nsd": 1.0}]
    bad = harness.run_batch(_batch("bad", _label(1), affine=affine), nothing)
    assert bad == [{"score": 0.0, "dsc": 0.0, "nsd": 0.0}]
    logger = _Logger()
    files = harness.finish([logger], step=3)
    rows = harness.cases.rows
    assert [r["case"] for r in rows] == ["good", "bad"]
    assert rows[0]["dsc_1"] == 1.0 and rows[0]["dsc_auc"] == pytest.approx(
        1.0
    )  # 2 click steps: one trapezoid
    assert rows[1]["dsc_final"] == 0.0
    assert files["cases_csv"].read_text().startswith("case,dataset,classes,")
    classes = harness.classes.rows
    assert {(r["case"], r["class_name"]) for r in classes} >= {("good", "liver"), ("bad", "spleen")}
    assert {r["clicks"] for r in classes if r["case"] == "bad"} == {"ff"}  # two misses each
    assert {r["clicks"] for r in classes if r["case"] == "good"} == {"--"}  # nothing to fix
    pred = nib.load(tmp_path / "predictions" / "good.nii.gz")
    np.testing.assert_allclose(pred.affine, affine)
    assert np.array_equal(np.asarray(pred.dataobj).transpose(2, 1, 0), _label(0).numpy())
    assert "worst" in files["overlay_worst"].name and "bad" in files["overlay_worst"].name
    assert "good" in files["overlay_best"].name
    columns, data = logger.tables["test/protocol_interactive"]
    assert columns[0] == "case" and len(data) == 2
    columns, data = logger.tables["test/classes"]
    assert columns == ["case", "class", "dsc", "nsd"] and len(data) == 4
    assert sorted(logger.images) == [
        "overlays/protocol_interactive_best",
        "overlays/protocol_interactive_worst",
    ]


@pytest.mark.parametrize(("clicks", "box", "steps"), [(0, True, 1), (3, False, 3)])
def test_box_only_and_clicks_only_variants(
    tmp_path: Path, clicks: int, box: bool, steps: int
) -> None:
    harness = ProtocolHarness("interactive", tmp_path, num_clicks=clicks, box=box)

    def oracle(image, spacing, prompts, previous):
        return image.long()

    assert harness.run_batch(_batch("a", _label(0)), oracle)[0]["dsc"] == 1.0
    row = harness.cases.rows[0]
    assert f"dsc_{steps}" in row and f"dsc_{steps + 1}" not in row
    assert len(harness.steps.rows) == steps
    expected = {"box"} if box else {"click"}
    assert {r["prompt"] for r in harness.steps.rows} == expected


def test_overlays_name_the_case_and_its_score(tmp_path: Path) -> None:
    harness = ProtocolHarness("interactive", tmp_path, num_clicks=1)

    def oracle(image, spacing, prompts, previous):
        return image.long()

    harness.run_batch(_batch("a", _label(0)), oracle)
    (picture,) = harness._pictures
    score, name, pixels = picture
    assert score == 1.0 and name.startswith("a_z")
    assert pixels.shape[1] >= 2 * 512  # two panels, each upscaled to at least 512 px


def test_text_uses_the_cases_prompts_or_the_class_names(tmp_path: Path) -> None:
    harness = ProtocolHarness("text", tmp_path)
    seen: list[dict[int, str]] = []

    cases: list[str] = []

    def segment(image, spacing, prompts, meta):
        seen.append(dict(prompts))
        cases.append(meta["case_id"])
        return image.long()

    harness.run_batch(_batch("a", _label(0), text_prompts={1: "a liver", 2: "a spleen"}), segment)
    harness.run_batch(_batch("b", _label(0)), segment)
    assert seen == [{1: "a liver", 2: "a spleen"}, {1: "liver", 2: "spleen"}]
    assert cases == ["a", "b"]  # each case's metadata reaches the segmenter
    assert [r["dsc"] for r in harness.cases.rows] == [1.0, 1.0]
    harness.finish()
    assert (tmp_path / "protocol_text_cases.csv").is_file()
    assert (tmp_path / "protocol_text_classes.csv").read_text().count("a spleen") == 1


def test_cases_without_masks_are_skipped_with_a_warning(tmp_path: Path) -> None:
    harness = ProtocolHarness("interactive", tmp_path)
    batch = _batch("nomask", _label(0))
    del batch["label"]
    with pytest.warns(UserWarning, match="no reference mask"):
        assert harness.run_batch(batch, lambda *a: None) == []
    assert harness.unscored == ["nomask"] and "skipped" in harness.summary_markdown()


def test_unknown_protocol() -> None:
    with pytest.raises(ValueError, match="unknown protocol"):
        ProtocolHarness("zoom", ".")  # type: ignore[arg-type]


def test_merge_pools_every_process(tmp_path: Path) -> None:
    ours, theirs = ProtocolHarness("text", tmp_path), ProtocolHarness("text", tmp_path)

    def perfect(image, spacing, prompts, meta):
        return image.long()

    def nothing(image, spacing, prompts, meta):
        return torch.zeros(image.shape, dtype=torch.long)

    ours.run_batch(_batch("a", _label(0)), perfect)
    theirs.run_batch(_batch("b", _label(0)), nothing)
    other_rank = iter([theirs.cases.rows, theirs.classes.rows, theirs.steps.rows, [], []])
    other_rank_pictures = [{"picture": p} for p in theirs._pictures]

    def gather(rows):  # what all_gather_object gives with two processes
        extra = next(other_rank)
        if rows and "picture" in rows[0]:
            extra = other_rank_pictures
        return rows + extra

    ours.merge(gather)
    assert [r["case"] for r in ours.cases.rows] == ["a", "b"]
    files = ours.finish()
    assert "b" in files["overlay_worst"].name and "a" in files["overlay_best"].name


def _oracle(image, spacing, prompts, previous):
    ref = image.long()
    return torch.where(torch.isin(ref, torch.tensor(sorted(prompts))), ref, 0)


def test_challenge_npz_without_boxes_skips_the_box_step(tmp_path: Path) -> None:
    # an npz case whose data module read no boxes (meta "boxes" None): as the official loop,
    # step 1 scores 0 and all_segs holds the 5 click-step predictions
    harness = ProtocolHarness("interactive", tmp_path)
    calls = []

    def method(image, spacing, prompts, previous):
        calls.append({c: p.box for c, p in prompts.items()})
        return _oracle(image, spacing, prompts, previous)

    meta = {"file_name": "a.npz", "boxes": None}
    assert harness.run_batch(_batch("a", _label(0), **meta), method)[0]["dsc"] == 1.0
    assert len(calls) == 5 and all(box is None for call in calls for box in call.values())
    row = harness.cases.rows[0]
    assert row["dsc_1"] == 0.0 and row["nsd_1"] == 0.0 and row["dsc_2"] == 1.0
    # the steps table still lists step 1, as skipped
    first = harness.steps.rows[0]
    assert first["step"] == 1 and first["skipped"] and first["dsc"] == 0.0
    with np.load(tmp_path / "predictions" / "a.npz") as npz:
        assert npz["all_segs"].shape == (5, *_label(0).shape)
        assert np.array_equal(npz["all_segs"][-1], npz["segs"])


@pytest.mark.parametrize(
    ("boxes_from_mask", "meta", "predictions"),
    [
        (None, {}, 6),  # no boxes key (NIfTI, nnU-Net, npy): boxes from the mask
        (True, {"boxes": None}, 6),  # asked for: boxes from the mask
        (False, {}, 5),  # never: the box step is skipped
    ],
)
def test_boxes_from_mask_option(
    tmp_path: Path, boxes_from_mask: bool | None, meta: dict, predictions: int
) -> None:
    harness = ProtocolHarness("interactive", tmp_path, boxes_from_mask=boxes_from_mask)
    harness.run_batch(_batch("a", _label(0), file_name="a.npz", **meta), _oracle)
    assert harness.steps.rows[0]["skipped"] is (predictions == 5)
    with np.load(tmp_path / "predictions" / "a.npz") as npz:
        assert npz["all_segs"].shape[0] == predictions


def test_box_only_run_of_an_npz_case_without_boxes(tmp_path: Path) -> None:
    # auto: a box-only run (MedSAM's test) boxes the classes from the mask, else it would not
    # run at all; forced off, nothing runs and the case scores 0 with an all-zero prediction
    meta = {"file_name": "a.npz", "boxes": None}
    auto = ProtocolHarness("interactive", tmp_path / "auto", num_clicks=0)
    assert auto.run_batch(_batch("a", _label(0), **meta), _oracle)[0]["dsc"] == 1.0
    off = ProtocolHarness("interactive", tmp_path / "off", num_clicks=0, boxes_from_mask=False)
    assert off.run_batch(_batch("a", _label(0), **meta), _oracle)[0]["dsc"] == 0.0
    assert off.steps.rows[0]["skipped"]
    with np.load(tmp_path / "off" / "predictions" / "a.npz") as npz:
        assert not npz["segs"].any() and "all_segs" not in npz.files
