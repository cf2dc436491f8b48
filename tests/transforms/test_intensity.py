"""Intensity normalisations: SegVol's unit range and the embeddings' CT / MR window."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segfm.transforms.intensity import _percentile, unit_range, window_ct_mr


def test_foreground_normalization_matches_segvol_preprocessing() -> None:
    from data_tools.build_dataset import normalize
    from segfm.data.m3d_datasets import min_max

    generator = np.random.default_rng(0)
    volume = generator.integers(0, 256, (2, 12, 20, 18)).astype(np.uint8)  # npz's 0-255
    volume[1, :, :4] = 255  # a bright slab: the 99.95 % clip matters
    got = unit_range(torch.from_numpy(volume)[:, None], "foreground")[:, 0]
    for v in range(2):  # build_dataset's clip and z-score, then the data module's min-max
        want = min_max(normalize(volume[v]))
        np.testing.assert_allclose(got[v].numpy(), want, atol=1e-5)
    assert got.min() == 0 and got.max() == 1
    for n in (1, 2, 7, 1000):  # the kthvalue percentile is numpy's
        values = torch.from_numpy(generator.normal(size=n))
        for q in (0.05, 50.0, 99.95):
            assert float(_percentile(values, q)) == pytest.approx(np.percentile(values, q))


def test_unit_range_modes() -> None:
    image = torch.tensor([[[2.0, 4.0, 6.0]], [[-1.0, -1.0, 1.0]]])  # [N=2, C=1, 3]
    assert torch.equal(unit_range(image.long(), "none"), image)  # as given, as float32
    torch.testing.assert_close(
        unit_range(image, "minmax"), torch.tensor([[[0.0, 0.5, 1.0]], [[0.0, 0.0, 1.0]]])
    )


def test_window_ct_mr_known_values() -> None:
    ct = np.array([-2000.0, -1024.0, 3071.0, 5000.0], np.float32)
    np.testing.assert_allclose(window_ct_mr(ct, "ct"), [-50.0, -50.0, 205.0, 205.0])
    np.testing.assert_allclose(window_ct_mr(ct, "auto"), window_ct_mr(ct, "ct"))  # min < -500
    mr = np.linspace(0.0, 1000.0, 1001, dtype=np.float32)
    out = window_ct_mr(mr, "mr")  # the 0.2 / 99.8 percentiles: 2 and 998
    assert out[0] == out[2] == pytest.approx(-50.0) and out[-1] == pytest.approx(205.0)
    np.testing.assert_allclose(window_ct_mr(mr, "auto"), out)
    assert window_ct_mr(mr, "none").dtype == np.float32
