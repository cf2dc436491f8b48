"""The one error a request can end in: a message for the person, and an HTTP status."""

from __future__ import annotations

from segfm.errors import SegfmError


class RequestError(SegfmError):
    """A request the server cannot answer; the message says what to send instead.

    Args:
        message: One line naming the problem and the fix.
        status: HTTP status on segfm's own routes (400 by default, 409 without an image, 413
            for uploads over the limits); the SlicerNNInteractive routes answer with 200, see
            :mod:`segfm.serve.app`.
    """

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status
