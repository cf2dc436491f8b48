"""A stand-in for torch_npu's Python surface, for tests of the wiring on machines without NPUs.

It answers the calls segfm makes (``npu.is_available``, ``device_count``, ``set_device``,
``memory_stats``, ``empty_cache``, ``amp.GradScaler``) and records them; it runs nothing.
"""

from __future__ import annotations

import types
from typing import Any


class FakeGradScaler:
    """Stands for ``torch_npu.npu.amp.GradScaler``."""


def make(count: int = 8, available: bool = True) -> types.ModuleType:
    """A module object to put in ``sys.modules["torch_npu"]``."""
    calls: list[tuple[str, Any]] = []
    npu = types.SimpleNamespace(
        is_available=lambda: available,
        device_count=lambda: count,
        set_device=lambda device: calls.append(("set_device", device)),
        memory_stats=lambda device: {"allocated_bytes.all.current": 0},
        empty_cache=lambda: calls.append(("empty_cache", None)),
        amp=types.SimpleNamespace(GradScaler=FakeGradScaler),
    )
    module = types.ModuleType("torch_npu")
    module.npu = npu  # type: ignore[attr-defined]
    module.calls = calls  # type: ignore[attr-defined]
    return module
