"""The HTTP interface: the SlicerNNInteractive server's routes, segfm's own, and the page.

The routes of the SlicerNNInteractive server (``server/`` of coendevente/SlicerNNInteractive),
with the request shapes its 3D Slicer extension sends:

- ``POST /upload_image``: multipart ``file``, the ``.npy`` of the volume ``(Z, Y, X)``
  (Slicer's ``arrayFromVolume``); starts a session on it;
- ``POST /upload_segment``: multipart ``file``, the gzipped ``.npy`` of the current segment;
  all zeros starts an empty target, anything else a target that continues from it;
- ``POST /add_point_interaction``: JSON ``{"voxel_coord": [z, y, x], "positive_click": bool}``;
- ``POST /add_bbox_interaction``: JSON ``{"outer_point_one": [z, y, x], "outer_point_two":
  [z, y, x], "positive_click": bool}``;
- ``POST /add_lasso_interaction`` / ``/add_scribble_interaction``: answered "not supported".

Prompts answer with the target's mask, one bit per voxel (``numpy.packbits``), gzipped, with
``Content-Encoding: gzip``. Errors on these routes are what the extension reads: HTTP 200 with
``{"status": "error", "message": ...}`` (it shows the message; on ``No image uploaded`` it
uploads the image and segment again and repeats the prompt). Bodies over the upload limit are
refused with 413 before they are read.

segfm's own routes (``/api/...``) serve the page (``GET /``): load a file, fetch the image
for display, text prompts, undo, a new target, the mask as NIfTI; their errors use HTTP codes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, File, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel

from segfm.serve.codec import pack_mask, read_gzipped_npy, read_npy
from segfm.serve.errors import RequestError
from segfm.serve.session import Session
from segfm.serve.volumes import display_volume, mask_nifti, read_upload

STATIC = Path(__file__).parent / "static"
#: the routes of the SlicerNNInteractive server (errors answered as its extension reads them)
SLICER_ROUTES = (
    "/upload_image",
    "/upload_segment",
    "/add_point_interaction",
    "/add_bbox_interaction",
    "/add_lasso_interaction",
    "/add_scribble_interaction",
)

log = logging.getLogger("segfm.serve")


class PointParams(BaseModel):
    """A click: ``voxel_coord`` ``[z, y, x]``; ``positive_click`` true for foreground."""

    voxel_coord: list[float]
    positive_click: bool


class BBoxParams(BaseModel):
    """A box by two opposite corners ``[z, y, x]``; ``positive_click`` must be true."""

    outer_point_one: list[float]
    outer_point_two: list[float]
    positive_click: bool = True


class TextParams(BaseModel):
    """A text prompt naming the target, e.g. ``liver``."""

    text: str


def _error(request: Request, message: str, status: int) -> JSONResponse:
    body = {"status": "error", "message": message}
    slicer = request.url.path in SLICER_ROUTES and status != 413
    log.warning("%s %s: %s", request.method, request.url.path, message)
    return JSONResponse(body, status_code=200 if slicer else status)


class UploadLimit:
    """Refuse request bodies over ``max_bytes`` (413) before reading them.

    A declared ``Content-Length`` over the limit is answered at once; a body without one is
    counted as it arrives and refused when it passes the limit.
    """

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    def _too_large(self, size: str) -> JSONResponse:
        mb = self.max_bytes / 2**20
        message = (
            f"the upload is {size} bytes, over this server's limit of {mb:,.0f} MiB; "
            "crop or downsample the volume, or start segfm serve with a larger --max_upload_mb"
        )
        log.warning("refused an upload of %s bytes", size)
        return JSONResponse({"status": "error", "message": message}, status_code=413)

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        """Pass the request on, or answer 413."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._too_large(f"{int(declared):,}")(scope, receive, send)
            return
        seen, refused = 0, False

        async def counted() -> dict:
            nonlocal seen, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    # answer now; the app then sees a client that went away
                    refused = True
                    await self._too_large(f"more than {self.max_bytes:,}")(scope, receive, send)
                    return {"type": "http.disconnect"}
            return message

        async def sent(message: dict) -> None:
            if not refused:
                await send(message)

        await self.app(scope, counted, sent)


def _mask_response(session: Session, mask: Any) -> Response:
    headers = {"Content-Encoding": "gzip", "X-Segfm-Seconds": f"{session.last_seconds:.4f}"}
    return Response(pack_mask(mask), media_type="application/octet-stream", headers=headers)


def create_app(session: Session, run_dir: str | Path, max_upload_bytes: int = 2**30) -> FastAPI:
    """The server's app.

    Args:
        session: The method and its state.
        run_dir: The run folder; the only place the server writes (NIfTI uploads, briefly).
        max_upload_bytes: Largest request body accepted.
    """
    run_dir = Path(run_dir)
    app = FastAPI(title="segfm serve", version="1", docs_url="/api/docs", redoc_url=None)
    app.add_middleware(UploadLimit, max_bytes=max_upload_bytes)
    name = type(session.method).__name__

    @app.exception_handler(RequestError)
    async def request_error(request: Request, exc: RequestError) -> JSONResponse:
        return _error(request, str(exc), exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = [f"{'.'.join(str(p) for p in e['loc'][1:])}: {e['msg']}" for e in exc.errors()]
        return _error(request, f"malformed request ({'; '.join(parts)})", 422)

    @app.exception_handler(Exception)
    async def failed(request: Request, exc: Exception) -> JSONResponse:
        log.exception("%s %s failed", request.method, request.url.path)
        return _error(request, f"{name} failed on this prompt ({exc!r})", 500)

    @app.middleware("http")
    async def timing(request: Request, call_next: Callable[[Request], Awaitable[Any]]) -> Any:
        start = time.perf_counter()
        response = await call_next(request)
        if request.method == "POST":
            log.info(
                "%s %d in %.3f s",
                request.url.path,
                response.status_code,
                time.perf_counter() - start,
            )
        return response

    # ----------------------------------------------------- SlicerNNInteractive
    @app.post("/upload_image")
    def upload_image(file: UploadFile = File(...)) -> dict:  # noqa: B008
        data = file.file.read()
        array = read_npy(data, "the uploaded image", session.max_voxels)
        session.set_image(array, name=file.filename or "upload")
        return {"status": "ok"}

    @app.post("/upload_segment")
    def upload_segment(file: UploadFile = File(...)) -> dict:  # noqa: B008
        image = session.require_image()
        # inflated no further than a mask of the image's shape can be: no gzip bomb gets big
        voxels = int(np.prod(image.shape))
        mask = read_gzipped_npy(file.file.read(), "the uploaded segment", voxels)
        session.new_target(mask)
        return {"status": "ok"}

    @app.post("/add_point_interaction")
    def add_point(params: PointParams) -> Response:
        return _mask_response(session, session.add_point(params.voxel_coord, params.positive_click))

    @app.post("/add_bbox_interaction")
    def add_bbox(params: BBoxParams) -> Response:
        mask = session.add_box(
            params.outer_point_one, params.outer_point_two, params.positive_click
        )
        return _mask_response(session, mask)

    @app.post("/add_lasso_interaction")
    @app.post("/add_scribble_interaction")
    def unsupported(request: Request) -> Response:
        kind = request.url.path.removeprefix("/add_").removesuffix("_interaction")
        msg = f"{kind} prompts are not supported by {name}; use points or a box"
        raise RequestError(msg)

    # ------------------------------------------------------------ segfm's own
    @app.get("/api/info")
    def info() -> dict:
        image = session.image
        return {
            "method": name,
            "tracks": session.tracks,
            "prompts": (["point", "box"] if "interactive" in session.tracks else [])
            + (["text"] if "text" in session.tracks else []),
            "intensity": session.intensity,
            "max_upload_bytes": max_upload_bytes,
            "image": None
            if image is None
            else {"name": image.name, "shape": list(image.shape), "spacing": image.spacing},
            "undo": len(session.history),
        }

    @app.post("/api/load")
    def load(file: UploadFile = File(...)) -> dict:  # noqa: B008
        filename = Path(file.filename or "upload").name
        array, spacing, affine = read_upload(
            file.file.read(), filename, run_dir / "uploads", session.max_voxels
        )
        image = session.set_image(array, spacing, affine, filename)
        return {
            "status": "ok",
            "name": image.name,
            "shape": list(image.shape),
            "spacing": image.spacing,
        }

    @app.get("/api/image")
    def image_bytes() -> Response:
        image = session.require_image()
        grey = display_volume(image.model_input.float().cpu().numpy())
        headers = {"X-Segfm-Shape": ",".join(str(v) for v in image.shape)}
        return Response(grey.tobytes(), media_type="application/octet-stream", headers=headers)

    @app.get("/api/mask")
    def mask() -> Response:
        return _mask_response(session, session.mask)

    @app.post("/api/text")
    def text(params: TextParams) -> Response:
        return _mask_response(session, session.add_text(params.text))

    @app.post("/api/undo")
    def undo() -> Response:
        return _mask_response(session, session.undo())

    @app.post("/api/new_target")
    def new_target() -> dict:
        session.new_target()
        return {"status": "ok"}

    @app.get("/api/mask.nii.gz")
    def download() -> Response:
        image = session.require_image()
        data = mask_nifti(session.mask, image.affine, run_dir / "downloads")
        stem = image.name.removesuffix(".gz").rsplit(".", 1)[0] or "image"
        headers = {"Content-Disposition": f'attachment; filename="{stem}_mask.nii.gz"'}
        return Response(data, media_type="application/gzip", headers=headers)

    @app.get("/")
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
