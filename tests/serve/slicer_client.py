"""The requests the SlicerNNInteractive 3D Slicer extension sends, without Slicer.

Written from the request shapes of the extension's client (``SlicerNNInteractive.py`` of
coendevente/SlicerNNInteractive, the version with its own ``server/``): the same HTTP library
(``requests``), the same multipart encoder (``requests_toolbelt``) for the image, the same file
names, content types and headers, the same JSON bodies, coordinates sent reversed from Slicer's
IJK order (``xyz[::-1]``, i.e. ``[z, y, x]`` of ``arrayFromVolume``'s array), and the same way of
reading answers: a non-200 status or a JSON ``{"status": "error"}`` is an error, anything else
is the bit-packed mask of the volume's shape.
"""

from __future__ import annotations

import gzip
import io

import numpy as np
import requests
from requests_toolbelt import MultipartEncoder


class SlicerError(RuntimeError):
    """What the extension would show in its error pop-up."""


class SlicerClient:
    """One Slicer scene: a volume (``arrayFromVolume`` order) and a server URL."""

    def __init__(self, server: str, volume: np.ndarray) -> None:
        self.server, self.volume = server.rstrip("/"), volume
        self.requests: list[str] = []

    def _post(self, url: str, **kwargs) -> requests.Response:
        self.requests.append(url.removeprefix(self.server))
        response = requests.post(url, timeout=120, **kwargs)
        if response.status_code != 200:
            msg = (
                f"Something has gone wrong with your request (Status code {response.status_code})."
            )
            raise SlicerError(msg)
        if "application/json" in response.headers.get("Content-Type", ""):
            body = response.json()
            if body.get("status") == "error":
                raise SlicerError(f"Server error: {body.get('message', 'Unknown error')}")
        return response

    def test_connection(self) -> int:
        """The "Test connection" button: a GET of the server URL."""
        return requests.get(self.server, timeout=5).status_code

    def upload_image(self) -> dict:
        """``upload_image_to_server``: np.save, a MultipartEncoder, no gzip."""
        buffer = io.BytesIO()
        np.save(buffer, self.volume)
        files = {"file": ("volume.npy", buffer.getvalue(), "application/octet-stream")}
        encoder = MultipartEncoder(fields=files)
        response = self._post(
            f"{self.server}/upload_image",
            data=encoder,
            headers={"Content-Type": encoder.content_type},
        )
        return response.json()

    @staticmethod
    def _mask_file(mask: np.ndarray) -> dict:
        buffer = io.BytesIO()
        np.save(buffer, mask)
        return {
            "file": ("volume.npy.gz", gzip.compress(buffer.getvalue()), "application/octet-stream")
        }

    def upload_segment(self, segment: np.ndarray) -> dict:
        """``upload_segment_to_server``: the segment's labelmap, gzipped npy, a gzip header."""
        response = self._post(
            f"{self.server}/upload_segment",
            files=self._mask_file(segment),
            headers={"Content-Encoding": "gzip"},
        )
        return response.json()

    def _unpack(self, content: bytes) -> np.ndarray:
        shape = self.volume.shape
        bits = np.unpackbits(np.frombuffer(content, dtype=np.uint8))[: int(np.prod(shape))]
        return bits.reshape(shape).astype(np.bool_).astype(np.uint8)

    def point_prompt(self, xyz: tuple[int, int, int], positive_click: bool) -> np.ndarray:
        """A point placed at Slicer IJK ``xyz``."""
        body = {"voxel_coord": list(xyz)[::-1], "positive_click": positive_click}
        return self._unpack(self._post(f"{self.server}/add_point_interaction", json=body).content)

    def bbox_prompt(self, one: list[int], two: list[int], positive_click: bool) -> np.ndarray:
        """A box by two outer points in Slicer IJK order."""
        body = {
            "outer_point_one": one[::-1],
            "outer_point_two": two[::-1],
            "positive_click": positive_click,
        }
        return self._unpack(self._post(f"{self.server}/add_bbox_interaction", json=body).content)

    def lasso_or_scribble_prompt(
        self, mask: np.ndarray, positive_click: bool, tp: str
    ) -> np.ndarray:
        """A lasso or scribble: a gzipped npy mask and the flag as a string, multipart."""
        buffer = io.BytesIO()
        np.save(buffer, mask)
        fields = {
            "file": ("volume.npy.gz", gzip.compress(buffer.getvalue()), "application/octet-stream"),
            "positive_click": str(positive_click),
        }
        encoder = MultipartEncoder(fields=fields)
        response = self._post(
            f"{self.server}/add_{tp}_interaction",
            data=encoder,
            headers={"Content-Type": encoder.content_type, "Content-Encoding": "gzip"},
        )
        return self._unpack(response.content)
