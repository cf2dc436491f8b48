"""The Trainer's ``devices`` for NPUs: a count, ``-1`` / ``"auto"``, ``"0,1"`` or a list of ids.

Indices count within the NPUs the process sees: with ``ASCEND_RT_VISIBLE_DEVICES=4,5,6,7``,
``devices: "0,1"`` means physical NPUs 4 and 5 (as CUDA_VISIBLE_DEVICES does for GPUs).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from segfm.accelerators.runtime import VISIBLE_DEVICES_ENV
from segfm.errors import ConfigError


def parse_npu_devices(devices: int | str | Sequence[int], available: int) -> list[int]:
    """NPU indices from the Trainer's ``devices`` value.

    Follows Lightning's GPU rules: an integer ``n`` is the first ``n`` NPUs, ``-1`` (or
    ``"-1"``, ``"auto"``) all of them, a string with commas (``"0,1"``, ``"3,"``) or a list
    names indices.

    Args:
        devices: The Trainer's ``devices``.
        available: NPUs visible to the process.

    Returns:
        Distinct indices in ``[0, available)``, in the given order.

    Raises:
        ConfigError: If the value is malformed or asks for NPUs that are not visible.
    """
    if isinstance(devices, str):
        text = devices.strip()
        if text in ("auto", "-1"):
            devices = -1
        elif "," in text:
            try:
                devices = [int(p) for p in text.split(",") if p.strip()]
            except ValueError:
                raise _bad(devices) from None
        else:
            try:
                devices = int(text)
            except ValueError:
                raise _bad(devices) from None
    if isinstance(devices, bool):
        raise _bad(devices)
    if isinstance(devices, int):
        if devices == -1:
            ids = list(range(available))
        elif devices > 0:
            ids = list(range(devices))
        else:
            raise _bad(devices)
    else:
        ids = [int(i) for i in devices]
        if not ids or len(set(ids)) != len(ids) or min(ids) < 0:
            raise _bad(devices)
    if not ids or max(ids) >= available:
        raise _too_many(devices, available)
    return ids


def _bad(devices: object) -> ConfigError:
    msg = (
        f"devices={devices!r} is not an NPU selection: give a count (8), -1 for all, "
        "or indices ('0,1' or [0, 1])"
    )
    return ConfigError(msg)


def _too_many(devices: object, available: int) -> ConfigError:
    visible = os.environ.get(VISIBLE_DEVICES_ENV)
    seen = f"{available} NPU(s) are visible"
    if visible is not None:
        seen += f" ({VISIBLE_DEVICES_ENV}={visible}; indices count within that list)"
    msg = f"devices={devices!r} asks for NPUs that do not exist here: {seen}"
    return ConfigError(msg)


def npu_index(device: int | str | torch.device) -> int:
    """The index of one NPU given as ``3``, ``"3"``, ``"npu:3"``, ``"npu"`` or a torch device.

    Raises:
        ConfigError: If the device is not an NPU.
    """
    if isinstance(device, torch.device):
        kind, index = device.type, device.index
    elif isinstance(device, int) and not isinstance(device, bool):
        kind, index = "npu", device
    elif isinstance(device, str) and device.strip().isdigit():
        kind, index = "npu", int(device)
    elif isinstance(device, str):
        kind, _, number = device.strip().partition(":")
        index = int(number) if number.isdigit() else None
        if number and index is None:
            kind = ""
    else:
        kind, index = "", None
    if kind != "npu" or (index is not None and index < 0):
        msg = f"{device!r} is not an NPU (give 'npu:0', 'npu' or an index)"
        raise ConfigError(msg)
    return 0 if index is None else index
