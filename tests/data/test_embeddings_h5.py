"""The HDF5 anatomical-embedding file: round trip, conventions, bad files."""

import h5py
import nibabel as nib
import numpy as np
import pytest

from segfm.data.io.embeddings_h5 import (
    EmbeddingVolume,
    nifti_affine,
    read_embeddings,
    write_embeddings,
)
from segfm.errors import DataError


def _arrays(rng, shape=(8, 32, 32), semantic=False):
    d, h, w = shape
    out = {
        "fine": rng.standard_normal((4, d // 2, h // 2, w // 2)),
        "coarse": rng.standard_normal((4, d // 4, h // 16, w // 16)),
    }
    if semantic:
        out["semantic"] = rng.standard_normal((4, d // 2, h // 2, w // 2))
    return out


def test_round_trip_keeps_everything(tmp_path):
    rng = np.random.default_rng(0)
    arrays = _arrays(rng, semantic=True)
    affine = np.diag([2.0, 0.8, 0.7, 1.0])
    affine[:3, 3] = [-10, 5, 3]
    image = rng.standard_normal((8, 32, 32))
    path = tmp_path / "case_1.h5"
    write_embeddings(
        path, arrays, (2.0, 0.8, 0.7), affine, None, (8, 32, 32), source="x.nii.gz", image=image
    )
    vol = read_embeddings(path)
    assert isinstance(vol, EmbeddingVolume)
    assert vol.case_id == "case_1" and vol.source == "x.nii.gz"
    assert vol.fine.dtype == np.float16 and vol.semantic is not None
    for name, array in arrays.items():
        np.testing.assert_allclose(vol.embeddings[name], array, atol=2e-3, rtol=1e-3)
    assert vol.strides == {"fine": (2, 2, 2), "coarse": (4, 16, 16), "semantic": (2, 2, 2)}
    assert vol.image_shape == (8, 32, 32) and vol.spacing == (2.0, 0.8, 0.7)
    np.testing.assert_array_equal(vol.affine, affine)
    np.testing.assert_allclose(vol.image, image.astype(np.float32))
    assert not list(tmp_path.glob(".tmp-*"))


def test_affine_is_zyx_index_to_nibabel_world(tmp_path):
    """A point's world coordinates agree with nibabel's on the NIfTI the grid came from."""
    nifti = np.array([[0, 0, 1.5, -3], [0, -0.9, 0, 7], [2.0, 0, 0, 1], [0, 0, 0, 1]])
    image = nib.Nifti1Image(np.zeros((32, 32, 8), np.float32), nifti)  # (x, y, z) array
    zyx = nifti_affine(nifti)
    np.testing.assert_array_equal(nifti_affine(zyx), nifti)
    write_embeddings(
        tmp_path / "a.h5",
        _arrays(np.random.default_rng(1)),
        (1.5, 0.9, 2.0),
        zyx,
        None,
        (8, 32, 32),
    )
    vol = read_embeddings(tmp_path / "a.h5")
    ijk = np.array([3.0, 10.0, 5.0])  # nibabel (x, y, z) index
    world = nib.affines.apply_affine(image.affine, ijk)
    np.testing.assert_allclose(vol.index_to_world(ijk[::-1])[0], world)
    np.testing.assert_allclose(vol.world_to_index(world)[0], ijk[::-1])


def test_odd_shapes_take_ceil_or_floor(tmp_path):
    rng = np.random.default_rng(2)
    arrays = {
        "fine": rng.standard_normal((2, 5, 9, 9)),
        "coarse": rng.standard_normal((2, 2, 1, 1)),
    }
    write_embeddings(tmp_path / "b.h5", arrays, (1, 1, 1), np.eye(4), None, (9, 17, 17))
    assert read_embeddings(tmp_path / "b.h5").fine.shape == (2, 5, 9, 9)
    arrays["fine"] = rng.standard_normal((2, 3, 9, 9))
    with pytest.raises(ValueError, match="fine grid"):
        write_embeddings(tmp_path / "c.h5", arrays, (1, 1, 1), np.eye(4), None, (9, 17, 17))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"spacing": (1, 0, 1)}, "spacing"),
        ({"affine": np.zeros((4, 4))}, "affine"),
        ({"strides": {"fine": (2, 2)}}, "fine stride"),
        ({"image_shape": (8, 32)}, "image_shape"),
    ],
)
def test_bad_arguments_name_the_value(tmp_path, kwargs, match):
    args = {"spacing": (1, 1, 1), "affine": np.eye(4), "strides": None, "image_shape": (8, 32, 32)}
    with pytest.raises(ValueError, match=match):
        write_embeddings(tmp_path / "x.h5", _arrays(np.random.default_rng(3)), **(args | kwargs))
    assert not (tmp_path / "x.h5").exists()


def test_missing_coarse_refused(tmp_path):
    arrays = _arrays(np.random.default_rng(4))
    del arrays["coarse"]
    with pytest.raises(ValueError, match="coarse"):
        write_embeddings(tmp_path / "x.h5", arrays, (1, 1, 1), np.eye(4), None, (8, 32, 32))


def test_bad_files_name_the_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_embeddings(tmp_path / "nope.h5")
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(DataError, match=r"text\.h5 is not a valid embedding file"):
        read_embeddings(tmp_path / "text.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["fine"] = np.zeros((1, 2, 2, 2))
    with pytest.raises(DataError, match="format attribute"):
        read_embeddings(tmp_path / "other.h5")
    write_embeddings(
        tmp_path / "ok.h5",
        _arrays(np.random.default_rng(5)),
        (1, 1, 1),
        np.eye(4),
        None,
        (8, 32, 32),
    )
    with h5py.File(tmp_path / "ok.h5", "a") as f:
        f.attrs["image_shape"] = np.array([8, 64, 32])
    with pytest.raises(DataError, match="fine grid"):
        read_embeddings(tmp_path / "ok.h5")
