"""``segfm track`` on constructed embeddings of DLT-style pairs whose answers are known."""

import csv
import json

import numpy as np
import pytest

from segfm.cli import main
from segfm.commands.track import track
from segfm.errors import ConfigError, DataError
from segfm.tracking.dlt import dlt_nifti_affine, dlt_to_world, world_to_dlt
from tests.tracking.synthetic_embeddings import scale_shift, write_case

# an LPS+ 2 mm grid (x' to the left, y' to the back, z' up) over both DeepLesion-style volumes
GRID = np.array([[0, 0, -2.0, 0], [0, -2.0, 0, 0], [2.0, 0, 0, -46], [0, 0, 0, 1]])
MOVE = scale_shift(1.1, [8.0, -6.0, 10.0])
SRC_SPACING, TGT_SPACING = [1.0, 1.0, 4.0], [0.8, 0.8, 2.5]
CENTRES = [[30.0, 30.0, 5.0], [20.0, 40.0, 7.0], [40.0, 25.0, 4.0]]


@pytest.fixture(scope="module")
def dlt(tmp_path_factory):
    root = tmp_path_factory.mktemp("dlt")
    emb = root / "emb"
    write_case(emb, "000001_01_01_001-012", GRID, (24, 32, 32))
    write_case(emb, "000001_02_01_003-030", GRID, (24, 32, 32), MOVE)
    pairs = {}
    for i, centre in enumerate(CENTRES):
        world = dlt_to_world(centre, dlt_nifti_affine(SRC_SPACING))
        truth = world_to_dlt(world @ MOVE[:3, :3].T + MOVE[:3, 3], dlt_nifti_affine(TGT_SPACING))[0]
        box = [*(truth - [6, 6, 2]).round(1), 12, 12, 4]
        pairs[f"{i + 1:04d}"] = {
            "source": "000001_01_01_001-012.nii.gz",
            "target": "000001_02_01_003-030.nii.gz",
            "source box": [*(np.array(centre) - [5, 5, 1]), 10, 10, 2],
            "target box": box,
            "source center": centre,
            "target center": truth.round(2).tolist(),
            "source spacing": SRC_SPACING,
            "target spacing": TGT_SPACING,
            "target recist diameter": [12.0, 8.0],  # radius 6 px = 4.8 mm
        }
    (root / "test.json").write_text(json.dumps(pairs))
    return root


@pytest.mark.parametrize("method", ["nearest", "fixed_point"])
def test_track_finds_the_moved_lesions(dlt, method, capsys):
    summary = track(
        str(dlt / "emb"), str(dlt / "test.json"), str(dlt / method), method=method, workers=1
    )
    assert summary["pairs"] == 3 and summary["cpm_box"] == 1.0 and summary["cpm_10mm"] == 1.0
    assert summary["cpm_radius"] == 1.0
    assert summary["med"]["mean"] < 3.0  # the 2 mm grid of the embeddings; identity is ~15 mm
    rows = list(csv.DictReader((dlt / method / f"pairs_{method}.csv").open()))
    assert [r["pair"] for r in rows] == ["0001", "0002", "0003"]
    saved = json.loads((dlt / method / f"summary_{method}.json").read_text())
    assert saved["cpm_box"] == 1.0 and saved["method"] == method
    assert "| inside box" in capsys.readouterr().out


def test_identity_baseline_is_far(dlt):
    """The known answers are far from the query position, so the test above can fail."""
    data = json.loads((dlt / "test.json").read_text())
    for pair in data.values():
        src = dlt_to_world(pair["source center"], dlt_nifti_affine(SRC_SPACING))
        tgt = dlt_to_world(pair["target center"], dlt_nifti_affine(TGT_SPACING))
        assert np.linalg.norm(src - tgt) > 10


def test_missing_embeddings_are_listed(dlt, tmp_path):
    emb = tmp_path / "emb"
    emb.mkdir()
    with pytest.raises(DataError, match=r"2 of 2 embedding files are missing.*000001_01_01_001"):
        track(str(emb), str(dlt / "test.json"), workers=1)


def test_track_from_the_command_line(dlt, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    main(
        [
            "track",
            "--embeddings",
            str(dlt / "emb"),
            "--pairs",
            str(dlt / "test.json"),
            "--output",
            str(out),
            "--method",
            "fixed_point",
            "--workers",
            "1",
        ]
    )
    assert (out / "pairs_fixed_point.csv").is_file()
    assert "tracked 3 pairs (fixed_point)" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["track", "--embeddings", "x", "--pairs", "y", "--method", "bogus"])
    with pytest.raises(ConfigError, match="threshold"):
        main(
            [
                "track",
                "--embeddings",
                str(dlt / "emb"),
                "--pairs",
                str(dlt / "test.json"),
                "--threshold",
                "1.3",
            ]
        )
