"""A trained method, ready to segment, from what a user has: a checkpoint, a bundle, a file.

Three sources name a method and its weights:

- a Lightning checkpoint of ``segfm fit`` (:func:`method_from_checkpoint`): its
  ``hyper_parameters`` name the class and its init arguments, its ``state_dict`` the weights;
- a class and init arguments, e.g. the ``model`` section of a config whose
  ``init_args.checkpoint`` names an official file (:func:`method_from_config`);
- a challenge bundle (:func:`segfm.challenge.bundle.load_method`), which stores the same two.

Every path ends in :func:`instantiate_method`, so the arguments are checked the way the command
line checks them (jsonargparse, against the class's signature).
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Any

import torch

from segfm.checkpoints.io import load_file
from segfm.errors import CheckpointError, ConfigError

#: init arguments naming initial weights, replaced by the trained ones when a checkpoint loads
INITIAL_WEIGHTS = ("checkpoint",)


def method_class(class_path: str) -> type:
    """The method class of ``class_path`` (``segfm.methods.SAMMed3D``) or a registry name."""
    from segfm import methods

    if "." not in class_path:
        if class_path not in methods.__all__ or class_path == "BaseTask":
            names = ", ".join(n for n in methods.__all__ if n != "BaseTask")
            msg = f"unknown method {class_path!r}; choose one of {names} or a class path"
            raise ConfigError(msg)
        return getattr(methods, class_path)
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        msg = f"cannot import the method {class_path!r} ({e})"
        raise CheckpointError(msg) from e


def tracks_of(cls: type) -> list[str]:
    """The prompts a method class takes: ``interactive`` (boxes, clicks) and/or ``text``."""
    from segfm.methods.base import BaseTask

    found = []
    if getattr(cls, "segment_interactive", None) is not BaseTask.segment_interactive:
        found.append("interactive")
    if getattr(cls, "segment_text", None) is not BaseTask.segment_text:
        found.append("text")
    return found


def inference_init_args(
    hparams: dict[str, Any], cls: type, only_known: bool = True
) -> dict[str, Any]:
    """Init arguments for inference: nothing written, no export, no validation.

    Initial-weight files are dropped (the trained weights replace them), predictions and
    overlays are not saved, validation is off and no output folder is named.

    Args:
        hparams: The arguments (a checkpoint's ``hyper_parameters``, a config's ``init_args``).
        cls: The method class.
        only_known: Keep only the class's own arguments (a checkpoint also stores Lightning's
            keys); False leaves unknown ones for :func:`instantiate_method` to report.
    """
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    args = {k: v for k, v in hparams.items() if k in accepted or not only_known}
    for key in INITIAL_WEIGHTS:
        if key in args:
            args[key] = None
    if "output_dir" in accepted:
        args["output_dir"] = None
    if "export_official" in accepted:
        args["export_official"] = False
    if "evaluation" in accepted:
        evaluation = dict(args.get("evaluation") or {})
        evaluation |= {"save_predictions": False, "num_overlays": 0}
        if "validate" in evaluation:
            evaluation["validate"] = False
        args["evaluation"] = evaluation
    return args


def instantiate_method(class_path: str, init_args: dict[str, Any], source: str) -> Any:
    """Build a method from its class path and init arguments, checked as the CLI checks them.

    Args:
        class_path: ``segfm.methods.<Name>``.
        init_args: Arguments of its ``__init__``.
        source: Where they came from, named in errors.

    Raises:
        ConfigError: If the arguments do not fit the class.
    """
    from jsonargparse import ArgumentParser

    from segfm.methods.base import BaseTask

    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(BaseTask, "model", required=True)
    try:
        cfg = parser.parse_object({"model": {"class_path": class_path, "init_args": init_args}})
    except Exception as e:  # jsonargparse names the offending option
        msg = f"{source}: the model section does not describe a segfm method ({e})"
        raise ConfigError(msg) from e
    return parser.instantiate(cfg).model


def ready(method: Any, device: str = "auto") -> Any:
    """``method`` in eval mode on ``device`` (``auto``: CUDA when present)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return method.to(device).eval()


def load_weights(method: Any, state_dict: dict[str, Any], source: str) -> None:
    """Load a segfm state dict into ``method``, naming ``source`` when it does not fit."""
    try:
        method.load_state_dict(state_dict)
    except RuntimeError as e:
        msg = f"{source} does not fit {type(method).__name__}: {e}"
        raise CheckpointError(msg) from e


def method_from_checkpoint(ckpt_path: str | Path, device: str = "auto") -> Any:
    """The method of a ``segfm fit`` checkpoint, with its trained weights, in eval mode.

    Raises:
        CheckpointError: If the file is not a Lightning checkpoint of a segfm method.
    """
    ckpt = load_file(str(ckpt_path))
    hparams = ckpt.get("hyper_parameters", {}) if isinstance(ckpt, dict) else {}
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "_class_path" not in hparams:
        msg = (
            f"{ckpt_path}: not a Lightning checkpoint of segfm fit (no state_dict or method); "
            "for an official file use --method and --checkpoint"
        )
        raise CheckpointError(msg)
    class_path = str(hparams["_class_path"])
    cls = method_class(class_path)
    method = instantiate_method(class_path, inference_init_args(hparams, cls), str(ckpt_path))
    load_weights(method, ckpt["state_dict"], str(ckpt_path))
    return ready(method, device)


def method_from_config(
    method: str,
    init_args: dict[str, Any] | None = None,
    checkpoint: str | None = None,
    device: str = "auto",
) -> Any:
    """A method built from its init arguments, its weights from an official file.

    Args:
        method: Registry name (``SAMMed3D``) or class path.
        init_args: Its init arguments (e.g. the ``model.init_args`` of a config); defaults are
            the released network.
        checkpoint: An official weights file (``sam_med3d_turbo.pth``, ``medsam_vit_b.pth``,
            ``SegVol_v1.pth``, ...), loaded by the method's ``checkpoint`` argument.
        device: ``auto``, ``cpu``, ``cuda``, ...
    """
    cls = method_class(method)
    class_path = f"{cls.__module__}.{cls.__name__}"
    args = dict(init_args or {})
    if checkpoint is not None:
        if not Path(checkpoint).is_file():
            msg = f"--checkpoint {checkpoint} does not exist; name an official weights file"
            raise CheckpointError(msg)
        args["checkpoint"] = str(checkpoint)
    weights = args.get("checkpoint")
    args = inference_init_args(args, cls, only_known=False)
    if weights is not None:
        args["checkpoint"] = weights
    return ready(instantiate_method(class_path, args, f"--method {method}"), device)
