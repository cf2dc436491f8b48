"""The protocol's bytes: npy headers checked before reading, bounded gzip, packed masks."""

from __future__ import annotations

import gzip
import io

import numpy as np
import pytest

from segfm.serve.codec import gunzip, pack_mask, read_gzipped_npy, read_npy, unpack_mask
from segfm.serve.errors import RequestError


def _npy(array: np.ndarray, version: tuple[int, int] | None = None) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array, version=version)
    return buffer.getvalue()


@pytest.mark.parametrize("version", [(1, 0), (2, 0)])
@pytest.mark.parametrize("fortran", [False, True])
def test_read_npy_any_header_and_order(version, fortran) -> None:
    array = np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4)
    if fortran:
        array = np.asfortranarray(array)
    out = read_npy(_npy(array, version), "x", max_voxels=24)
    assert out.shape == (2, 3, 4) and out.flags.c_contiguous
    np.testing.assert_array_equal(out, array)


def test_read_npy_refuses_before_reading_data() -> None:
    header_only = _npy(np.zeros((100, 100, 100), np.uint8))[:128]  # a header, no data
    with pytest.raises(RequestError, match="1,000,000 voxels, over this server's limit") as e:
        read_npy(header_only, "the image", max_voxels=999_999)
    assert e.value.status == 413
    with pytest.raises(RequestError, match="cut short: 0 of 1,000,000 bytes"):
        read_npy(header_only, "the image", max_voxels=10**6)


def test_gunzip_members_and_limit() -> None:
    data = gzip.compress(b"abc") + gzip.compress(b"defg")  # two members, as `cat a.gz b.gz`
    assert gunzip(data, 7, "x") == b"abcdefg"
    with pytest.raises(RequestError, match="inflates to more than 6 bytes") as e:
        gunzip(data, 6, "x")
    assert e.value.status == 413
    with pytest.raises(RequestError, match="truncated gzip stream"):
        gunzip(gzip.compress(bytes(1000))[:-12], 10**6, "x")
    with pytest.raises(RequestError, match="not gzip-compressed"):
        gunzip(b"plain bytes", 10**6, "x")


def test_read_gzipped_npy_limit_follows_the_voxels() -> None:
    mask = np.ones((4, 5, 6), np.uint8)
    np.testing.assert_array_equal(read_gzipped_npy(gzip.compress(_npy(mask)), "m", 120), mask)
    big = gzip.compress(_npy(np.ones((40, 50, 60), np.float64)))
    with pytest.raises(RequestError, match="inflates to more than 4,096"):
        read_gzipped_npy(big, "m", 0)


def test_pack_mask_is_numpy_packbits_gzipped() -> None:
    rng = np.random.default_rng(0)
    mask = (rng.random((3, 5, 7)) > 0.5).astype(np.uint8)  # 105 voxels: a partial last byte
    packed = gzip.decompress(pack_mask(mask))
    assert packed == np.packbits(mask.astype(bool), axis=None).tobytes()
    np.testing.assert_array_equal(unpack_mask(packed, mask.shape), mask)
