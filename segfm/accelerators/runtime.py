"""torch_npu on demand: imported inside functions when an NPU is asked for, never at import.

torch_npu is Ascend's PyTorch adapter: importing it names the ``npu`` device type, adds
``torch_npu.npu`` (``device_count``, ``set_device``, ``memory_stats``, ``amp.GradScaler`` ...)
and registers the HCCL process-group backend. segfm calls these functions directly and never
imports ``torch_npu.contrib.transfer_to_npu`` (which rewrites ``cuda`` calls into ``npu`` ones).
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import torch

from segfm.errors import ConfigError, SegfmError

#: the Ascend runtime's list of the NPUs a process sees (the analogue of CUDA_VISIBLE_DEVICES)
VISIBLE_DEVICES_ENV = "ASCEND_RT_VISIBLE_DEVICES"


class NPUUnavailableError(SegfmError, RuntimeError):
    """An NPU was asked for, but torch_npu is missing or broken, or sees no NPU."""


def _import_torch_npu() -> ModuleType:
    return importlib.import_module("torch_npu")


def require_torch_npu() -> ModuleType:
    """Import torch_npu, or fail with one line that says what to do.

    Returns:
        The ``torch_npu`` module.

    Raises:
        NPUUnavailableError: If torch_npu is not installed or does not import.
    """
    try:
        return _import_torch_npu()
    except ModuleNotFoundError as err:
        if err.name != "torch_npu":
            raise _broken(err) from err
        msg = (
            "accelerator 'npu' needs torch_npu, which is not installed: pip install torch_npu "
            f"(the release built for torch {torch.__version__.split('+')[0]} and your CANN)"
        )
        raise NPUUnavailableError(msg) from None
    except (ImportError, OSError) as err:
        raise _broken(err) from err


def _broken(err: BaseException) -> NPUUnavailableError:
    first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    msg = (
        f"torch_npu is installed but does not import ({first_line}); source CANN's set_env.sh "
        "(e.g. /usr/local/Ascend/ascend-toolkit/set_env.sh) and check that torch_npu matches "
        f"torch {torch.__version__}"
    )
    return NPUUnavailableError(msg)


def require_npu() -> ModuleType:
    """Import torch_npu and check that it sees at least one NPU.

    Returns:
        The ``torch_npu`` module.

    Raises:
        NPUUnavailableError: If torch_npu is missing or broken, or no NPU is visible.
    """
    torch_npu = require_torch_npu()
    if not torch_npu.npu.is_available() or torch_npu.npu.device_count() < 1:
        visible = os.environ.get(VISIBLE_DEVICES_ENV)
        where = f" with {VISIBLE_DEVICES_ENV}={visible}" if visible is not None else ""
        msg = f"torch_npu sees no NPU{where}; check the driver with `npu-smi info`"
        raise NPUUnavailableError(msg)
    return torch_npu


def npu_is_available() -> bool:
    """Whether torch_npu imports and sees an NPU (never raises)."""
    try:
        require_npu()
    except (NPUUnavailableError, RuntimeError):
        return False
    return True


def visible_device_ids() -> list[int] | None:
    """The physical NPU ids listed in ``ASCEND_RT_VISIBLE_DEVICES``, or None when it is unset.

    Raises:
        ConfigError: If the variable is not a comma-separated list of distinct integers.
    """
    value = os.environ.get(VISIBLE_DEVICES_ENV)
    if value is None:
        return None
    parts = [p.strip() for p in value.split(",") if p.strip()]
    if not all(p.isdigit() for p in parts) or len(set(parts)) != len(parts):
        msg = f"{VISIBLE_DEVICES_ENV}={value!r} is not a list of distinct NPU ids like '0,1,2,3'"
        raise ConfigError(msg)
    return [int(p) for p in parts]


def visible_npu_count() -> int:
    """How many NPUs this process may use.

    torch_npu's count when it is installed (it already honours ``ASCEND_RT_VISIBLE_DEVICES``),
    else the length of ``ASCEND_RT_VISIBLE_DEVICES`` (0 when unset), so that device lists can
    be checked on a machine without the adapter.
    """
    try:
        torch_npu = _import_torch_npu()
    except (ImportError, OSError):
        ids = visible_device_ids()
        return 0 if ids is None else len(ids)
    return int(torch_npu.npu.device_count())


def npu_device(index: int) -> torch.device:
    """``torch.device("npu", index)`` (the device type exists once torch_npu is imported)."""
    require_torch_npu()
    return torch.device("npu", index)
