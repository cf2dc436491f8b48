"""``segfm serve``: an interactive segmentation server for 3D Slicer and a web page."""

from __future__ import annotations

import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

import yaml

from segfm.errors import ConfigError

#: the port of the SlicerNNInteractive server, which its extension's examples name
DEFAULT_PORT = 1527


def _method(
    ckpt_path: str | None,
    model: str | None,
    method: str | None,
    checkpoint: str | None,
    config: str | None,
    device: str,
) -> Any:
    """The method from exactly one source (see :func:`serve`)."""
    given = [name for name, v in (("ckpt_path", ckpt_path), ("model", model)) if v]
    if method or checkpoint or config:
        given.append("method")
    if len(given) != 1:
        msg = (
            "name the model once: --ckpt_path X.ckpt (segfm fit), --model BUNDLE (segfm export "
            "--format challenge), or --method NAME [--checkpoint OFFICIAL_FILE] [--config YAML]"
        )
        raise ConfigError(msg)
    if ckpt_path:
        from segfm.methods.loading import method_from_checkpoint

        return method_from_checkpoint(ckpt_path, device)
    if model:
        from segfm.challenge.bundle import load_method

        return load_method(model, device)
    init_args: dict[str, Any] = {}
    if config:
        path = Path(config)
        if not path.is_file():
            msg = f"--config {config} does not exist"
            raise ConfigError(msg)
        section = (yaml.safe_load(path.read_text()) or {}).get("model") or {}
        init_args = dict(section.get("init_args") or {})
        method = method or section.get("class_path")
    if not method:
        msg = "--checkpoint needs --method (e.g. SAMMed3D) or a --config with a model section"
        raise ConfigError(msg)
    from segfm.methods.loading import method_from_config

    return method_from_config(method, init_args, checkpoint, device)


def _logging(run_dir: Path) -> None:
    handlers: list[logging.Handler] = [
        logging.StreamHandler(sys.stderr),
        logging.FileHandler(run_dir / "serve.log"),
    ]
    fmt = logging.Formatter("%(asctime)s segfm serve: %(message)s", "%H:%M:%S")
    logger = logging.getLogger("segfm.serve")
    logger.handlers.clear()
    for handler in handlers:
        handler.setFormatter(fmt)
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def serve(
    ckpt_path: str | None = None,
    model: str | None = None,
    method: str | None = None,
    checkpoint: str | None = None,
    config: str | None = None,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    device: str = "auto",
    intensity: Literal["as_is", "ct", "mr"] = "as_is",
    window: str = "abdomen",
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
    max_upload_mb: int = 1024,
    run_dir: str | None = None,
) -> None:
    """Serve a promptable model to 3D Slicer (SlicerNNInteractive) and a web page.

    Point the SlicerNNInteractive extension at ``http://HOST:PORT``, or open that address in
    a browser. Prompts accumulate per target as in the interactive protocol; a new segment
    starts a new target. The log (per-prompt seconds) goes to the terminal and the run folder.

    Args:
        ckpt_path: Lightning checkpoint of ``segfm fit``.
        model: Folder written by ``segfm export --format challenge``.
        method: Method name (``MedSAM``, ``SAMMed3D``, ``SegVol``, ``BiomedParse``) or class
            path, built with ``--config``'s init arguments (else the released network).
        checkpoint: Official weights file for ``--method`` (``sam_med3d_turbo.pth``, ...).
        config: A segfm config whose ``model`` section gives the method's init arguments.
        host: Address to bind; the default answers this machine only (``0.0.0.0``: every
            network the machine is on: anyone who reaches it can upload and segment).
        port: Port (1527, as the SlicerNNInteractive server).
        device: ``auto`` (CUDA when present), ``cpu``, ``cuda``, ``cuda:1``, ...
        intensity: How uploaded intensities become the model's input: ``as_is`` (as trained on,
            e.g. the CVPR 2025 npz 0-255; SAM-Med3D and SegVol normalise raw values inside),
            ``ct`` (a CT window in HU to 0-255, as MedSAM's preprocessing) or ``mr``
            (percentiles to 0-255).
        window: CT window for ``--intensity ct``: ``abdomen``, ``chest`` or ``brain``.
        spacing: Voxel size ``(z, y, x)`` in mm of Slicer uploads (the extension sends voxels
            only); files loaded on the page carry their own.
        max_upload_mb: Largest request body in MiB; larger ones are refused unread (413).
        run_dir: The run folder (log, NIfTI uploads while read); the server writes nowhere
            else. Default ``runs/serve/<date-time>``.
    """
    try:
        import uvicorn

        from segfm.serve.app import create_app
    except ImportError as e:
        msg = (
            f"segfm serve needs FastAPI and uvicorn ({e}); install them: pip install 'segfm[serve]'"
        )
        raise ConfigError(msg) from e
    from segfm.serve.session import Session

    if max_upload_mb < 1:
        msg = f"--max_upload_mb must be at least 1, got {max_upload_mb}"
        raise ConfigError(msg)
    start = time.perf_counter()
    network = _method(ckpt_path, model, method, checkpoint, config, device)  # before any folder
    folder = Path(run_dir or Path("runs") / "serve" / time.strftime("%Y%m%d-%H%M%S"))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tmp").mkdir(exist_ok=True)
    tempfile.tempdir = str(folder / "tmp")  # multipart uploads spool here, not to /tmp
    _logging(folder)
    log = logging.getLogger("segfm.serve")
    session = Session(network, intensity=intensity, window=window, spacing=spacing)
    max_bytes = max_upload_mb * 2**20
    app = create_app(session, folder, max_upload_bytes=max_bytes)
    log.info(
        "%s on %s ready in %.2f s (%s prompts); run folder %s",
        type(network).__name__,
        session.device,
        time.perf_counter() - start,
        " and ".join(session.tracks),
        folder,
    )
    log.info("listening on http://%s:%d (3D Slicer: SlicerNNInteractive's server URL)", host, port)
    uvicorn.run(app, host=host, port=port, log_level="warning")
