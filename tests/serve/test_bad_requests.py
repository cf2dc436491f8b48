"""Bad requests get a clear answer, and the server goes on serving after each.

One live server (a tiny SAM-Med3D) takes every bad request in turn; after each, a valid prompt
must still be answered with a mask.
"""

from __future__ import annotations

import gzip
import io
import json
import socket
from collections.abc import Iterator
from urllib.parse import urlparse

import numpy as np
import pytest
import requests
import torch

from segfm.methods import SAMMed3D
from segfm.serve.app import create_app
from segfm.serve.session import Session
from tests.serve.conftest import live_server

SHAPE = (16, 24, 24)
LIMIT = 4 * 2**20  # the server's upload limit in these tests


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _file(data: bytes, name: str = "volume.npy") -> dict:
    return {"file": (name, data, "application/octet-stream")}


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[tuple[str, Session]]:
    torch.manual_seed(0)
    session = Session(SAMMed3D(arch="tiny", image_size=32).eval())
    app = create_app(session, tmp_path_factory.mktemp("run"), max_upload_bytes=LIMIT)
    with live_server(app) as url:
        yield url, session


def _error(response: requests.Response, status: int = 200) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["status"] == "error"
    return body["message"]


def _serving(url: str) -> None:
    """A valid upload and click still work."""
    image = np.random.default_rng(0).normal(0, 1, SHAPE).astype(np.float32)
    assert requests.post(f"{url}/upload_image", files=_file(_npy(image))).json() == {"status": "ok"}
    body = {"voxel_coord": [8, 12, 12], "positive_click": True}
    response = requests.post(f"{url}/add_point_interaction", json=body)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/octet-stream"
    assert len(response.content) == (np.prod(SHAPE) + 7) // 8


def test_no_image_uploaded(tmp_path) -> None:
    session = Session(SAMMed3D(arch="tiny", image_size=32).eval())
    with live_server(create_app(session, tmp_path)) as url:
        for route, body in [
            ("/add_point_interaction", {"voxel_coord": [1, 1, 1], "positive_click": True}),
            ("/add_bbox_interaction", {"outer_point_one": [1, 1, 1], "outer_point_two": [1, 4, 4]}),
        ]:
            message = _error(requests.post(f"{url}{route}", json=body))
            assert message.startswith("No image uploaded")  # the extension then re-uploads
        segment = gzip.compress(_npy(np.zeros(SHAPE, np.uint8)))
        assert "No image uploaded" in _error(
            requests.post(f"{url}/upload_segment", files=_file(segment, "volume.npy.gz"))
        )
        assert "No image uploaded" in _error(requests.get(f"{url}/api/mask"), 409)
        _serving(url)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (_npy(np.zeros((24, 24), np.int16)), "has shape (24, 24); send one 3D volume"),
        (_npy(np.zeros((2, 16, 24, 24), np.int16)), "send one 3D volume"),
        (_npy(np.zeros((0, 24, 24), np.int16)), "send one 3D volume"),
        (_npy(np.array([["a"]] * 3, dtype=object)), "send a numeric array"),
        (_npy(np.zeros(SHAPE, np.int16))[:-100], "is cut short"),
        (b"not an npy file at all", "is not a .npy file"),
        (_npy(np.full(SHAPE, np.nan, np.float32)), "NaN or infinite"),
    ],
    ids=["2d", "4d", "empty", "objects", "truncated", "garbage", "nan"],
)
def test_malformed_volumes(server, data: bytes, expected: str) -> None:
    url, _ = server
    assert expected in _error(requests.post(f"{url}/upload_image", files=_file(data)))
    _serving(url)


def test_wrong_segment_shape_and_point_outside(server) -> None:
    url, session = server
    _serving(url)
    segment = gzip.compress(_npy(np.ones((16, 24, 23), np.uint8)))
    message = _error(requests.post(f"{url}/upload_segment", files=_file(segment, "v.npy.gz")))
    assert "(16, 24, 23)" in message and "(16, 24, 24)" in message
    plain = _npy(np.ones(SHAPE, np.uint8))
    message = _error(requests.post(f"{url}/upload_segment", files=_file(plain, "v.npy.gz")))
    assert "not gzip-compressed" in message
    before = session.mask.copy()
    for coord in ([16, 0, 0], [0, -1, 0], [3, 5, 24]):
        body = {"voxel_coord": coord, "positive_click": True}
        message = _error(requests.post(f"{url}/add_point_interaction", json=body))
        assert f"the point {coord} lies outside the image of shape [16, 24, 24]" in message
    body = {"outer_point_one": [40, 30, 30], "outer_point_two": [50, 40, 40]}
    assert "lies outside the image" in _error(
        requests.post(f"{url}/add_bbox_interaction", json=body)
    )
    body = {"outer_point_one": [3, 1, 1], "outer_point_two": [3, 9, 9], "positive_click": False}
    message = _error(requests.post(f"{url}/add_bbox_interaction", json=body))
    assert message == "negative boxes are not supported by SAMMed3D"
    message = _error(requests.post(f"{url}/add_point_interaction", json={"voxel_coord": [1, 2]}))
    assert message.startswith("malformed request") and "positive_click" in message
    np.testing.assert_array_equal(session.mask, before)  # refused prompts change nothing
    _serving(url)


def test_gzip_bomb(server) -> None:
    """1 GiB of zeros in a ~1 MiB gzip: refused after inflating no more than a mask can be."""
    url, _ = server
    _serving(url)
    header = gzip.compress(_npy(np.zeros((1024, 1024, 1024), np.uint8))[:128])  # 1 GiB's
    bomb = header + gzip.compress(bytes(2**24), compresslevel=9) * 64  # 64 gzip members
    assert len(bomb) < 2 * 2**20
    message = _error(requests.post(f"{url}/upload_segment", files=_file(bomb, "v.npy.gz")), 413)
    assert "inflates to more than" in message and "gzipped .npy of one mask" in message
    _serving(url)


def test_two_gigabyte_upload(server) -> None:
    """A 2 GiB body is refused from its Content-Length, before any of it is read."""
    url, _ = server
    address = urlparse(url)
    with socket.create_connection((address.hostname, address.port), timeout=30) as sock:
        head = (
            "POST /upload_image HTTP/1.1\r\n"
            f"Host: {address.netloc}\r\n"
            "Content-Type: multipart/form-data; boundary=x\r\n"
            f"Content-Length: {2 * 2**30}\r\n\r\n"
        )
        sock.sendall(head.encode() + b"--x\r\n" + bytes(2**16))
        reply = b""
        while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
    status, _, rest = reply.partition(b"\r\n")
    assert b" 413 " in status
    body = json.loads(rest.split(b"\r\n\r\n", 1)[1])
    assert "2,147,483,648 bytes, over this server's limit of 4 MiB" in body["message"]
    assert "--max_upload_mb" in body["message"]
    _serving(url)


def test_streamed_upload_over_the_limit(server) -> None:
    """A body without Content-Length is counted as it arrives and refused past the limit."""
    url, _ = server

    def chunks() -> Iterator[bytes]:
        yield b'--x\r\nContent-Disposition: form-data; name="file"; filename="v.npy"\r\n\r\n'
        for _ in range(LIMIT // 2**20 + 2):
            yield bytes(2**20)

    headers = {"Content-Type": "multipart/form-data; boundary=x"}
    response = requests.post(f"{url}/upload_image", data=chunks(), headers=headers)
    assert "more than 4,194,304 bytes, over this server's limit of 4 MiB" in _error(response, 413)
    _serving(url)
