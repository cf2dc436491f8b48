import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from data_tools.synthetic import LABELS, main, make_dataset
from segfm.data.io.nifti import read_nifti

REPO = Path(__file__).resolve().parents[2]
TINY = {"size_range": (40, 48), "slices_range": (8, 12)}


def _case(root: Path, case: str):
    return read_nifti(root / "imagesTr" / f"{case}_0000.nii.gz"), read_nifti(
        root / "labelsTr" / f"{case}.nii.gz"
    )


def test_layout_and_dataset_json(tmp_path):
    root = make_dataset(tmp_path / "d", num_cases=3, seed=1, **TINY)
    assert sorted(p.name for p in (root / "imagesTr").iterdir()) == [
        f"synth_{i:03d}_0000.nii.gz" for i in range(3)
    ]
    assert sorted(p.name for p in (root / "labelsTr").iterdir()) == [
        f"synth_{i:03d}.nii.gz" for i in range(3)
    ]
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "CT"}
    assert meta["labels"] == LABELS and meta["labels"]["background"] == 0
    assert meta["numTraining"] == 3 and meta["file_ending"] == ".nii.gz"


def test_cases_types_sizes_and_spacing(tmp_path):
    root = make_dataset(tmp_path, num_cases=4, seed=0, **TINY)
    shapes = set()
    for i in range(4):
        image, label = _case(root, f"synth_{i:03d}")
        assert image.array.dtype == np.int16 and label.array.dtype == np.uint8
        assert image.array.shape == label.array.shape
        d, h, w = image.array.shape
        assert 8 <= d <= 12 and 40 <= h <= 48 and 40 <= w <= 48
        shapes.add(image.array.shape)
        sz, sy, sx = image.spacing
        assert 2.5 <= sz <= 5.0 and 0.7 <= sy <= 1.0 and sx == sy  # anisotropic, (z, y, x)
        assert np.allclose(np.abs(np.diag(image.affine)[:3]), [sx, sy, sz], atol=1e-6)
        assert np.allclose(image.affine, label.affine)
        assert image.array[:, 0, 0].max() < -900  # air in the corners
        assert set(np.unique(label.array)) == set(LABELS.values())
    assert len(shapes) > 1


def test_deterministic_and_seeded(tmp_path):
    a = make_dataset(tmp_path / "a", num_cases=2, seed=5, **TINY)
    b = make_dataset(tmp_path / "b", num_cases=2, seed=5, **TINY)
    c = make_dataset(tmp_path / "c", num_cases=2, seed=6, **TINY)
    for case in ("synth_000", "synth_001"):
        (ia, la), (ib, lb) = _case(a, case), _case(b, case)
        assert np.array_equal(ia.array, ib.array) and np.array_equal(la.array, lb.array)
        assert np.array_equal(ia.affine, ib.affine)
    first, other = _case(a, "synth_000")[0].array, _case(c, "synth_000")[0].array
    assert first.shape != other.shape or not np.array_equal(first, other)


def test_default_size_structures_are_distinct_and_large(tmp_path):
    root = make_dataset(tmp_path, num_cases=3, seed=0)
    for i in range(3):
        image, label = _case(root, f"synth_{i:03d}")
        hu, lab = image.array.astype(float), label.array
        counts = np.bincount(lab.ravel(), minlength=len(LABELS))
        assert counts[1:].min() >= 1000  # survives MedSAM's default small-object removal
        mean = {name: hu[lab == v].mean() for name, v in LABELS.items() if v}
        assert 0 < mean["spleen"] < mean["liver"] < mean["spleen"] + 40  # similar soft tissue
        assert mean["kidney_left"] > mean["liver"] + 50 and mean["aorta"] > mean["liver"] + 80
        assert hu[lab == 0].max() > mean["aorta"] + 200  # unlabelled bone is brighter


def test_invalid_arguments(tmp_path):
    with pytest.raises(ValueError, match="num_cases"):
        make_dataset(tmp_path, num_cases=0)
    with pytest.raises(ValueError, match="size_range"):
        make_dataset(tmp_path, num_cases=1, size_range=(50, 40))


def test_main_in_process(tmp_path, capsys):
    main(["--output", str(tmp_path / "d"), "--num_cases", "1", "--seed", "3"])
    assert (tmp_path / "d" / "labelsTr" / "synth_000.nii.gz").is_file()
    assert "1 cases" in capsys.readouterr().out


def test_cli_help():
    result = subprocess.run(
        [sys.executable, "-m", "data_tools.synthetic", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0 and "--num_cases" in result.stdout
