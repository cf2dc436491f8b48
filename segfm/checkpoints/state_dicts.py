"""Finding a network's weights inside a loaded checkpoint, and loading them strictly."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from segfm.errors import CheckpointError

#: keys of containers that wrap a state dict, tried in this order
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net")


def find_tensors(obj: Any, wrapper_keys: Sequence[str] = WRAPPER_KEYS) -> Mapping[str, Any] | None:
    """The innermost mapping holding tensors, descending through ``wrapper_keys``."""
    if not isinstance(obj, Mapping):
        return None
    if any(isinstance(v, Tensor) for v in obj.values()):
        return obj
    for key in wrapper_keys:
        found = find_tensors(obj.get(key), wrapper_keys)
        if found is not None:
            return found
    return None


def prefix_before(key: str, parts: Sequence[str]) -> str | None:
    """What precedes the first of ``parts`` (``"image_encoder."``, ...) in ``key``, if any does.

    ``""`` when ``key`` starts with a part, ``"module.model."`` for
    ``"module.model.image_encoder.x"``, None when no part occurs.
    """
    for part in parts:
        if key.startswith(part):
            return ""
        at = key.find("." + part)
        if at >= 0:
            return key[: at + 1]
    return None


def _names(names: list[str], limit: int = 3) -> str:
    shown = ", ".join(names[:limit])
    return shown + (", ..." if len(names) > limit else "")


def load_strict(model: nn.Module, state_dict: Mapping[str, Tensor], source: str, hint: str) -> None:
    """``model.load_state_dict(state_dict, strict=True)``, a mismatch explained in one line.

    Args:
        model: The network.
        state_dict: Its flat official state dict.
        source: Origin named in the error (a file path or ``"state dict"``).
        hint: How to fix a mismatch, appended to the error.

    Raises:
        CheckpointError: With the numbers of missing, unexpected and misshaped entries and the
            first few names of each.
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    misshaped = [
        f"{k}: checkpoint {list(state_dict[k].shape)} vs network {list(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    if missing or unexpected or misshaped:
        parts = [
            f"{len(names)} {label} ({_names(names)})"
            for label, names in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("misshaped", misshaped),
            )
            if names
        ]
        msg = (
            f"{source} does not fit the {type(model).__name__} network: {'; '.join(parts)}; {hint}"
        )
        raise CheckpointError(msg)
    model.load_state_dict(state_dict, strict=True)
