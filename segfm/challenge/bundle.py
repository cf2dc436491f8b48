"""A challenge build context: a trained model with everything its container needs.

``segfm export --format challenge`` writes into one folder:

- ``model.ckpt``: the network's weights (``state_dict``) and segfm's version, nothing of the
  optimiser;
- ``config.yaml``: the method and its init arguments, resolved (initial-weight files dropped,
  folders it reads at start-up copied beside it and named relative to it);
- ``predict.sh``: what the challenge runs (``sh predict.sh``): ``segfm challenge-predict`` over
  ``/workspace/inputs`` into ``/workspace/outputs``;
- ``Dockerfile``, ``requirements.txt`` and ``src/segfm``: a CUDA image with segfm installed;
- ``README.md``: how to build, try and save the image.

:func:`load_method` reads the folder back into a ready-to-run method.
"""

from __future__ import annotations

import importlib.metadata
import re
import shutil
from pathlib import Path
from typing import Any

import torch
import yaml

import segfm
from segfm.checkpoints.io import load_file
from segfm.errors import CheckpointError, ConfigError
from segfm.methods.loading import (
    inference_init_args,
    instantiate_method,
    load_weights,
    method_class,
    ready,
    tracks_of,
)

WEIGHTS, CONFIG = "model.ckpt", "config.yaml"
#: init arguments naming a folder read at start-up: copied into the bundle under this name
BUNDLED_FOLDERS = {"clip_dir": "clip"}
DEFAULT_BASE_IMAGE = "pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime"

_PREDICT_SH = """\
#!/bin/sh
# CVPR 2025 challenge entry point, written by segfm export --format challenge.
# The evaluator runs `sh predict.sh` with the cases in /workspace/inputs and reads
# /workspace/outputs; SEGFM_INPUTS, SEGFM_OUTPUTS and SEGFM_PYTHON override the defaults
# (segfm challenge-eval sets them to run this folder outside a container), SEGFM_DEVICE,
# SEGFM_TRACK and SEGFM_KEEP_STATE (false: no state carried between steps) the options.
HERE=$(cd "$(dirname "$0")" && pwd)
exec "${{SEGFM_PYTHON:-python}}" -m segfm challenge-predict --model "$HERE" \\
    --inputs "${{SEGFM_INPUTS:-/workspace/inputs}}" \\
    --outputs "${{SEGFM_OUTPUTS:-/workspace/outputs}}" --device "${{SEGFM_DEVICE:-{device}}}" \\
    --track "${{SEGFM_TRACK:-{track}}}" --keep_state "${{SEGFM_KEEP_STATE:-true}}"
"""

_DOCKERFILE = """\
# Build context written by segfm export --format challenge (segfm {version}).
FROM {base_image}
WORKDIR /workspace
COPY requirements.txt /opt/segfm/requirements.txt
RUN pip install --no-cache-dir -r /opt/segfm/requirements.txt
COPY src /opt/segfm/src
ENV PYTHONPATH=/opt/segfm/src
COPY . /workspace
RUN python -c "import segfm.challenge.entry"
"""

_README = """\
# {name}: a CVPR 2025 challenge submission

Written by `segfm export --format challenge` (segfm {version}) from `{ckpt}`.
Method: `{class_path}`; tracks: {tracks}.

Try it without docker, as the official evaluation loop runs it (box, then five clicks, each a
fresh `sh predict.sh`), on npz cases and their ground truth:

```bash
segfm challenge-eval --submission {name_path} --images CASES_DIR --gts GTS_DIR --output eval
```

Build and save the image (a CUDA base image; segfm and its dependencies are installed from this
folder), then try it exactly as the organisers do:

```bash
docker build -t {tag}:latest {name_path}
docker container run --gpus "device=0" -m 32G --name {tag} --rm \\
    -v $PWD/inputs/:/workspace/inputs/ -v $PWD/outputs/:/workspace/outputs/ \\
    {tag}:latest /bin/bash -c "sh predict.sh"
docker save {tag}:latest | gzip -c > {tag}.tar.gz
```

`config.yaml` holds the method's inference options (e.g. `inference`); edit it before building
to change them. `predict.sh` writes timings (start-up, per case, per class) to stderr.
"""


def _init_args(hparams: dict[str, Any], cls: type, bundle: Path) -> dict[str, Any]:
    """The method's init arguments for inference inside the bundle (folders copied)."""
    args = inference_init_args(hparams, cls)
    for key, name in BUNDLED_FOLDERS.items():
        folder = args.get(key)
        if folder:
            if not Path(folder).is_dir():
                msg = (
                    f"the model reads {key}={folder!r} at start-up but it is not a folder here; "
                    "export on the machine that trained it or fix the path in the checkpoint"
                )
                raise ConfigError(msg)
            shutil.copytree(folder, bundle / name, dirs_exist_ok=True)
            args[key] = name
    return args


def _requirements() -> str:
    """Segfm's run-time dependencies (torch comes with the base image)."""
    try:
        required = importlib.metadata.requires("segfm") or []
    except importlib.metadata.PackageNotFoundError:
        required = []
    lines = []
    for item in required:
        if "extra ==" in item:
            continue
        name = re.split(r"[<>=!~; \[]", item, maxsplit=1)[0].lower()
        if name != "torch":
            lines.append(item.split(";")[0].strip())
    return "\n".join(lines) + "\n"


def write_bundle(
    ckpt_path: str | Path,
    output: str | Path,
    device: str = "auto",
    base_image: str = DEFAULT_BASE_IMAGE,
    track: str = "auto",
) -> Path:
    """Write the build context of a challenge submission (see the module docstring).

    Args:
        ckpt_path: Lightning checkpoint of ``segfm fit``.
        output: Folder to write (created; files in it are replaced).
        device: Device ``predict.sh`` runs on by default (``auto``: CUDA when present).
        base_image: Docker base image (CUDA, with PyTorch).
        track: The track ``predict.sh`` enters (``auto``: decided per case from its keys).

    Returns:
        The folder.

    Raises:
        CheckpointError: If the file is not a segfm Lightning checkpoint of a promptable method.
    """
    ckpt = load_file(str(ckpt_path))
    hparams = ckpt.get("hyper_parameters", {}) if isinstance(ckpt, dict) else {}
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "_class_path" not in hparams:
        msg = f"{ckpt_path}: not a Lightning checkpoint of segfm fit (no state_dict or method)"
        raise CheckpointError(msg)
    class_path = str(hparams["_class_path"])
    cls = method_class(class_path)
    tracks = tracks_of(cls)
    if not tracks:
        msg = f"{ckpt_path}: {class_path} takes neither boxes and clicks nor text prompts"
        raise CheckpointError(msg)
    bundle = Path(output)
    if bundle.exists() and not bundle.is_dir():
        msg = f"--output {bundle} is a file; name a folder for the build context"
        raise ConfigError(msg)
    bundle.mkdir(parents=True, exist_ok=True)
    config = {"model": {"class_path": class_path, "init_args": _init_args(hparams, cls, bundle)}}
    config["challenge"] = {"tracks": tracks, "segfm_version": segfm.__version__}
    (bundle / CONFIG).write_text(yaml.safe_dump(config, sort_keys=False))
    weights = {"state_dict": ckpt["state_dict"], "segfm_version": segfm.__version__}
    tmp = bundle / f".{WEIGHTS}.tmp"
    torch.save(weights, tmp)
    tmp.replace(bundle / WEIGHTS)
    predict = bundle / "predict.sh"
    predict.write_text(_PREDICT_SH.format(device=device, track=track))
    predict.chmod(0o755)
    src = bundle / "src" / "segfm"
    if src.exists():
        shutil.rmtree(src)
    shutil.copytree(
        Path(segfm.__file__).parent, src, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    (bundle / "requirements.txt").write_text(_requirements())
    version = segfm.__version__
    (bundle / "Dockerfile").write_text(_DOCKERFILE.format(version=version, base_image=base_image))
    tag = re.sub(r"[^a-z0-9_.-]", "", bundle.resolve().name.lower()) or "segfm_submission"
    (bundle / "README.md").write_text(
        _README.format(
            name=bundle.name,
            name_path=bundle,
            version=version,
            ckpt=Path(ckpt_path).name,
            class_path=class_path,
            tracks=", ".join(tracks),
            tag=tag,
        )
    )
    return bundle


def load_method(bundle: str | Path, device: str = "auto") -> Any:
    """The method of a challenge bundle, with its weights, in eval mode on ``device``.

    Raises:
        CheckpointError: If the folder is not a bundle or its weights do not fit the method.
    """
    bundle = Path(bundle)
    config_path, weights_path = bundle / CONFIG, bundle / WEIGHTS
    if not config_path.is_file() or not weights_path.is_file():
        msg = (
            f"{bundle} has no {CONFIG} and {WEIGHTS}; point --model at a folder written by "
            "segfm export --format challenge"
        )
        raise CheckpointError(msg)
    config = yaml.safe_load(config_path.read_text())
    model = dict(config["model"])
    args = dict(model.get("init_args") or {})
    for key in BUNDLED_FOLDERS:
        if args.get(key):
            args[key] = str(bundle / args[key])
    try:
        method = instantiate_method(model["class_path"], args, str(config_path))
    except ConfigError as e:
        raise CheckpointError(str(e)) from e
    state = load_file(str(weights_path))["state_dict"]
    load_weights(method, state, f"{weights_path} (of {config_path})")
    return ready(method, device)
