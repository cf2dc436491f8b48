"""``segfm register``: a generated volume and a known affine copy; deeds with a fake binary."""

import json
import stat
import sys

import nibabel as nib
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

import segfm.tracking.register_files
from segfm.cli import main
from segfm.commands.register import register
from segfm.data.io.embeddings_h5 import nifti_affine
from segfm.data.io.nifti import Volume, write_nifti
from segfm.errors import DataError
from segfm.tracking.registration import register_volumes
from segfm.tracking.resample import warp
from tests.tracking.features import embed, textured_volume

FIXED_AFFINE = np.diag([1.6, 1.6, 2.5, 1.0])  # NIfTI (x, y, z), anisotropic
FIXED_AFFINE[:3, 3] = [-38, -38, -40]
MOVING_AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])
MOVING_AFFINE[:3, 3] = [-36, -44, -38]


def _transform(rigid):
    t = np.eye(4)
    t[:3, :3] = Rotation.from_rotvec([0.03, -0.05, 0.04]).as_matrix()
    if not rigid:
        t[:3, :3] = t[:3, :3] @ np.diag([1.05, 0.97, 1.0])
    t[:3, 3] = [4.0, -6.0, 3.0]
    return t


def _pair(rigid):
    fixed = textured_volume((32, 48, 48))
    moving = warp(
        fixed,
        nifti_affine(FIXED_AFFINE),
        nifti_affine(MOVING_AFFINE),
        (40, 40, 40),
        np.linalg.inv(_transform(rigid)),
        cval=-1000,
    )
    return Volume(fixed, FIXED_AFFINE, (2.5, 1.6, 1.6)), Volume(moving, MOVING_AFFINE, (2, 2, 2))


def _body_error(fixed, found, truth):
    idx = np.argwhere(fixed.array > -900)[::7].astype(float)
    world = idx @ nifti_affine(FIXED_AFFINE)[:3, :3].T + FIXED_AFFINE[:3, 3]
    diff = (world @ found[:3, :3].T + found[:3, 3]) - (world @ truth[:3, :3].T + truth[:3, 3])
    return np.linalg.norm(diff, axis=1).max()


@pytest.mark.parametrize("kind", ["affine", "rigid"])
def test_recovers_a_known_transform_within_a_voxel(kind):
    fixed, moving = _pair(rigid=kind == "rigid")
    result = register_volumes(fixed, moving, embed, kind, ("ct", "ct"), step=2)
    truth = _transform(kind == "rigid")
    assert _body_error(fixed, np.eye(4), truth) > 8  # identity is far off
    assert _body_error(fixed, result.transform, truth) < 2.0  # one voxel of the 2 mm grid
    assert result.inliers.mean() > 0.8
    body = fixed.array > -900
    corr = np.corrcoef(result.moved[body], fixed.array[body])[0, 1]
    unmoved = warp(
        moving.array, nifti_affine(MOVING_AFFINE), nifti_affine(FIXED_AFFINE), fixed.array.shape
    )
    baseline = np.corrcoef(unmoved[body], fixed.array[body])[0, 1]
    assert corr > 0.7 > 0.3 > baseline


def test_rotation_limit():
    fixed, moving = _pair(rigid=True)
    result = register_volumes(fixed, moving, embed, "rigid", ("ct", "ct"), step=3, max_rotation=0.0)
    np.testing.assert_allclose(result.transform[:3, :3], np.eye(3), atol=1e-6)


def test_no_reliable_match_is_one_line():
    fixed, moving = _pair(rigid=True)
    with pytest.raises(DataError, match="lower --threshold"):
        register_volumes(fixed, moving, embed, "affine", ("ct", "ct"), step=3, threshold=0.9999)


FAKE_DEEDS = """#!{python}
import sys, numpy as np, nibabel as nib
args = sys.argv[1:]
opt = {{args[i]: args[i + 1] for i in range(0, len(args), 2)}}
assert (opt["-l"], opt["-G"], opt["-L"], opt["-Q"]) == ("3", "5x4x3", "5x4x3", "2x2x1"), opt
m, n, o = nib.load(opt["-F"]).shape
assert nib.load(opt["-M"]).shape == (m, n, o)
size = (m // 3) * (n // 3) * (o // 3)
u, v, w = np.full(size, 1.5), np.zeros(size), np.full(size, -1.0)  # along j, i, k
np.concatenate([u, v, w]).astype("<f4").tofile(opt["-O"] + "_displacements.dat")
"""


@pytest.fixture
def files(tmp_path, monkeypatch):
    fixed, moving = _pair(rigid=False)
    write_nifti(tmp_path / "fixed.nii.gz", fixed.array, fixed.affine)
    write_nifti(tmp_path / "moving.nii.gz", moving.array, moving.affine)
    monkeypatch.setattr(
        segfm.tracking.register_files, "load_embedder", lambda ckpt, arch, device: embed
    )
    fake = tmp_path / "deedsBCV"
    fake.write_text(FAKE_DEEDS.format(python=sys.executable))
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    return tmp_path


def test_register_writes_outputs_and_applies_deeds(files):
    out = files / "out"
    report = register(
        str(files / "fixed.nii.gz"),
        str(files / "moving.nii.gz"),
        None,
        str(out),
        deeds=str(files / "deedsBCV"),
        fixed_modality="ct",
        moving_modality="ct",
        step=2,
    )
    saved = json.loads((out / "transform.json").read_text())
    matrix = np.array(saved["matrix"])
    np.testing.assert_allclose(np.loadtxt(out / "transform.txt"), matrix, atol=1e-5)
    assert report["inliers"] == saved["inliers"] > 50
    moved = nib.load(out / "moved.nii.gz")
    np.testing.assert_allclose(moved.affine, FIXED_AFFINE)
    # the fake field is (dz, dy, dx) = (-1, 1.5, 0) voxels of the 2 mm grid, in the fixed world
    iso = nifti_affine(np.asarray(nib.load(out / "deeds" / "fixed_deeds.nii.gz").affine))
    shift = np.eye(4)
    shift[:3, 3] = iso[:3, :3] @ np.array([-1.0, 1.5, 0.0])
    moving = nib.load(files / "moving.nii.gz")
    expected = warp(
        np.asarray(moving.dataobj).transpose(2, 1, 0),
        nifti_affine(moving.affine),
        nifti_affine(FIXED_AFFINE),
        (32, 48, 48),
        matrix @ shift,
    )
    got = np.asarray(nib.load(out / "moved_deeds.nii.gz").dataobj).transpose(2, 1, 0)
    np.testing.assert_allclose(got, expected, atol=1e-2)
    assert not np.allclose(got, np.asarray(moved.dataobj).transpose(2, 1, 0), atol=1)


def test_register_from_the_command_line(files, monkeypatch, capsys):
    main(
        [
            "register",
            "--fixed",
            str(files / "fixed.nii.gz"),
            "--moving",
            str(files / "moving.nii.gz"),
            "--ckpt",
            "null",
            "--out",
            str(files / "cli"),
            "--transform",
            "rigid",
            "--moving_modality",
            "ct",
            "--step",
            "3",
        ]
    )
    assert (files / "cli" / "moved.nii.gz").is_file()
    assert json.loads((files / "cli" / "transform.json").read_text())["kind"] == "rigid"
    assert "registered" in capsys.readouterr().out


def test_register_end_to_end_with_a_tiny_checkpoint(tmp_path):
    """`segfm register` with a real (tiny, untrained) checkpoint: no embedder is patched."""
    import torch

    from segfm.checkpoints.anatomical_embedding import save_official
    from segfm.models.anatomical_embedding import tiny_embedding

    torch.manual_seed(0)
    ckpt = save_official(tiny_embedding(), tmp_path / "tiny.pth")
    fixed, moving = _pair(rigid=True)
    write_nifti(tmp_path / "fixed.nii.gz", fixed.array, fixed.affine)
    write_nifti(tmp_path / "moving.nii.gz", moving.array, moving.affine)
    out = tmp_path / "out"
    main(
        [
            "register",
            "--fixed", str(tmp_path / "fixed.nii.gz"),
            "--moving", str(tmp_path / "moving.nii.gz"),
            "--ckpt", str(ckpt),
            "--arch", "tiny",
            "--out", str(out),
            "--moving_modality", "ct",
            "--threshold", "-1",
            "--ransac_threshold", "20",
            "--step", "2",
        ]
    )  # fmt: skip
    moved = nib.load(out / "moved.nii.gz")
    assert moved.shape == nib.load(tmp_path / "fixed.nii.gz").shape
    np.testing.assert_allclose(moved.affine, FIXED_AFFINE)
    matrix = np.array(json.loads((out / "transform.json").read_text())["matrix"])
    assert matrix.shape == (4, 4) and np.isfinite(matrix).all()
    np.testing.assert_allclose(np.loadtxt(out / "transform.txt"), matrix, atol=1e-5)
