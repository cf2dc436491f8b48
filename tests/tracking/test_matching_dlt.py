"""Matching with anatomical embeddings and the DLT tracking metrics, on known answers."""

import json

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from nibabel import orientations

from segfm.data.io.embeddings_h5 import read_embeddings
from segfm.errors import DataError
from segfm.tracking.dlt import (
    dlt_nifti_affine,
    dlt_to_world,
    markdown_table,
    read_dlt_pairs,
    score_pair,
    summarise,
    world_to_dlt,
)
from segfm.tracking.matching import (
    fixed_point_match,
    local_grid,
    match_points,
    match_space,
    upsample_linear,
)
from tests.tracking.synthetic_embeddings import scale_shift, write_case

AFFINE = np.array([[0, 0, -2.0, 20], [0, -2.0, 0, 25], [2.0, 0, 0, -30], [0, 0, 0, 1]])
MOVE = scale_shift(1.1, [8.0, -6.0, 10.0])


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    folder = tmp_path_factory.mktemp("emb")
    src = read_embeddings(write_case(folder, "src", AFFINE, (32, 32, 32), semantic=True))
    tgt = read_embeddings(write_case(folder, "tgt", AFFINE, (32, 32, 32), MOVE, semantic=True))
    return src, tgt


def _truth(src, tgt, points):
    world = src.index_to_world(points)
    return tgt.world_to_index(world @ MOVE[:3, :3].T + MOVE[:3, 3])


POINTS = np.array([[16.0, 16, 16], [10, 12, 20], [20, 8, 14], [14, 20, 9]])


@pytest.mark.parametrize("size", [(7, 9, 11), (3, 4, 5)])
def test_upsample_is_torch_trilinear(size):
    x = np.random.default_rng(0).standard_normal((2, 4, 5, 6)).astype(np.float32)
    ref = F.interpolate(torch.from_numpy(x)[None], size, mode="trilinear", align_corners=False)
    np.testing.assert_allclose(upsample_linear(x, size), ref[0].numpy(), atol=1e-5)


def test_nearest_match_finds_the_moved_point(pair):
    src, tgt = pair
    found = match_points(match_space(src), match_space(tgt), POINTS)
    truth = _truth(src, tgt, POINTS)
    # the query is read at its fine node (±0.5 voxel, x1.1 in the target) and the answer is a
    # voxel (±0.5): 1.5 voxels (3 mm) bound both
    assert np.abs(found.points - truth).max() <= 1.5
    assert np.all(found.scores <= 1.0) and np.all(found.scores > 0.8)
    identity = np.abs(POINTS - truth).max(axis=1)
    assert identity.min() > 3  # the test is not passed by returning the query


def test_semantic_is_averaged_in(pair):
    src, tgt = pair
    assert len(match_space(src).features) == 3
    assert len(match_space(src, use_semantic=False).features) == 2
    with_sem = match_points(match_space(src), match_space(tgt), POINTS[:1]).scores[0]
    without = match_points(
        match_space(src, use_semantic=False), match_space(tgt, use_semantic=False), POINTS[:1]
    ).scores[0]
    assert with_sem != pytest.approx(without) and with_sem <= 1
    with pytest.raises(ValueError, match="channels"):
        match_points(match_space(src), match_space(tgt, use_semantic=False), POINTS[:1])


def test_fixed_point_match_is_within_a_voxel(pair):
    src, tgt = pair
    query, key = match_space(src), match_space(tgt)
    truth = _truth(src, tgt, POINTS)
    for point, right in zip(POINTS, truth, strict=True):
        result = fixed_point_match(query, key, point, src.spacing)
        assert result.used > 50 and 0.8 < result.score <= 1
        assert np.abs(result.point - right).max() <= 1.0


def test_unreachable_threshold_falls_back_to_nearest(pair):
    """The original's 1.3 never passes (a mean of cosines is at most 1): nearest match is used."""
    src, tgt = pair
    query, key = match_space(src), match_space(tgt)
    result = fixed_point_match(query, key, POINTS[0], src.spacing, threshold=1.3)
    assert result.used == 0
    np.testing.assert_array_equal(result.point, match_points(query, key, POINTS[:1]).points[0])
    with pytest.raises(ValueError, match="iterations"):
        fixed_point_match(query, key, POINTS[0], src.spacing, iterations=3)


def test_local_grid_is_clipped_and_unique():
    nodes = local_grid(np.array([0, 5, 9]), 2, (8, 8, 10))
    assert nodes.min() == 0 and nodes[:, 2].max() == 9
    assert len(nodes) == 3 * 5 * 3 and len(np.unique(nodes, axis=0)) == len(nodes)


# --- DLT pairs file and metrics ----------------------------------------------------------------


def _entry(**overrides):
    entry = {
        "source": "000001_01_01_010-021.nii.gz",
        "target": "000001_02_01_005-030.nii.gz",
        "source box": [8, 8, 4, 4, 4, 2],
        "target box": [8, 8, 4, 4, 4, 2],
        "source center": [10, 10, 5],
        "target center": [10, 10, 5],
        "source spacing": [1.0, 1.0, 2.0],
        "target spacing": [1.0, 1.0, 2.0],
        "target recist diameter": [6.0, 4.0],
    }
    return entry | overrides


def test_read_pairs_and_radius(tmp_path):
    path = tmp_path / "test.json"
    path.write_text(json.dumps({"0001": _entry(**{"target spacing": [0.5, 0.5, 2.0]})}))
    (p,) = read_dlt_pairs(path)
    assert p.pair_id == "0001" and p.target.startswith("000001_02")
    assert p.target_radius_mm == pytest.approx(1.5)  # 6 px / 2 * 0.5 mm
    np.testing.assert_array_equal(p.target_box, [8, 8, 4, 4, 4, 2])


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("{not json", "cannot read"),
        (json.dumps({"0001": {"source": "a"}}), "pair 0001 lacks"),
        (json.dumps({"0001": _entry(**{"target box": [1, 2, 3]})}), "'target box' has 3"),
    ],
)
def test_bad_pairs_file_names_it(tmp_path, content, match):
    (tmp_path / "test.json").write_text(content)
    with pytest.raises(DataError, match=match):
        read_dlt_pairs(tmp_path / "test.json")


def test_dlt_coordinates_and_the_z_flip():
    """DL_save_nifti stores [row, column, slice]; LPS reorientation reverses only the slices."""
    spacing = np.array([0.8, 0.8, 5.0])
    affine = dlt_nifti_affine(spacing)
    shape = (20, 30, 7)  # rows (y), columns (x), slices (z)
    point = np.array([12.0, 4.0, 2.0])  # (x, y, z)
    world = dlt_to_world(point, affine)[0]
    np.testing.assert_allclose(world, nib.affines.apply_affine(affine, point[[1, 0, 2]]))
    np.testing.assert_allclose(world_to_dlt(world, affine)[0], point)
    ornt = orientations.io_orientation(affine)
    lps = orientations.axcodes2ornt(("L", "P", "S"))
    transform = orientations.ornt_transform(ornt, lps)
    volume = np.zeros(shape)
    volume[4, 12, 2] = 1
    moved = orientations.apply_orientation(volume, transform)  # axes now (L=x, P=y, S)
    assert tuple(np.argwhere(moved)[0]) == (12, 4, shape[2] - 1 - 2)


def test_both_cpm_conventions(tmp_path):
    path = tmp_path / "test.json"
    path.write_text(json.dumps({"0001": _entry()}))
    (p,) = read_dlt_pairs(path)  # centre (10, 10, 5), box x,y [8, 12) z [4, 6), radius 3 mm
    inside = score_pair(p, [11.0, 10.0, 5.0])  # 1 mm
    assert (inside["in_box"], inside["within_radius"], inside["within_10mm_dlt"]) == (1, 1, 1)
    # 2.8 mm along z: outside the box (corner 6.9 >= 6) but within the radius
    z_off = score_pair(p, [10.0, 10.0, 6.4])
    assert z_off["error_z"] == pytest.approx(2.8) and z_off["error_mm"] == pytest.approx(2.8)
    assert not z_off["in_box"] and z_off["within_radius"] and z_off["within_10mm_dlt"]
    # 4 mm: outside box and radius, inside 10 mm but not min(radius, 10 mm)
    far = score_pair(p, [14.0, 10.0, 5.0])
    assert not far["in_box"] and not far["within_radius"]
    assert far["within_10mm"] and not far["within_10mm_dlt"]
    # box lower edges are inclusive: voxel 7.5 has corner 8.0
    assert score_pair(p, [7.5, 10.0, 5.0])["in_box"]
    summary = summarise([inside, z_off, far])
    assert summary["pairs"] == 3 and summary["hits_box"] == 1
    assert summary["cpm_box"] == pytest.approx(1 / 3)
    assert summary["cpm_radius"] == pytest.approx(2 / 3)
    assert summary["cpm_10mm"] == pytest.approx(1.0)
    assert summary["cpm_10mm_dlt"] == pytest.approx(2 / 3)
    assert summary["med"]["mean"] == pytest.approx((1 + 2.8 + 4) / 3)
    assert summary["med_x"]["mean"] == pytest.approx(5 / 3)
    assert summary["med_z"]["std"] == pytest.approx(np.std([0, 2.8, 0]))
    table = markdown_table(summary)
    assert "| inside box" in table and "0.3333" in table and "0.6667" in table
