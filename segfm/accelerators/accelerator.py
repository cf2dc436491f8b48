"""Lightning accelerator for Huawei Ascend NPUs (``--trainer.accelerator npu``)."""

from __future__ import annotations

import sys
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.accelerators.registry import _AcceleratorRegistry
from lightning.pytorch.accelerators import Accelerator

from segfm.accelerators import runtime
from segfm.accelerators.devices import parse_npu_devices
from segfm.accelerators.precision import npu_precision
from segfm.errors import ConfigError


class NPUAccelerator(Accelerator):
    """Ascend NPUs through torch_npu, without ``transfer_to_npu``.

    Lightning never picks it by itself (``accelerator: auto`` knows CUDA, MPS and XLA only):
    name it with ``accelerator: npu`` and pair it with ``strategy: single_npu`` (one NPU) or
    ``ddp_npu`` (several, over HCCL). Constructing it imports torch_npu and fails with one line
    when the adapter or the NPUs are missing.
    """

    def __init__(self) -> None:
        super().__init__()
        runtime.require_npu()

    def setup_device(self, device: torch.device) -> None:
        """Make ``device`` the current NPU of this process.

        Raises:
            ConfigError: If the strategy placed the run on another device type (Lightning's
                default strategy for one non-CUDA device is a CPU one).
        """
        if device.type != "npu":
            msg = (
                f"accelerator 'npu' was given the {device.type} device {device}: set "
                "--trainer.strategy single_npu (one NPU) or ddp_npu (several)"
            )
            raise ConfigError(msg)
        runtime.require_torch_npu().npu.set_device(device)

    def setup(self, trainer: pl.Trainer) -> None:
        """Move a mixed-precision plugin made for CUDA onto the NPU, whatever the strategy."""
        trainer.strategy.precision_plugin = npu_precision(trainer.strategy.precision_plugin)

    def get_device_stats(self, device: torch.device | str | int) -> dict[str, Any]:
        """torch_npu's memory statistics of ``device``."""
        return dict(runtime.require_torch_npu().npu.memory_stats(device))

    def teardown(self) -> None:
        """Release cached NPU memory (only when torch_npu was loaded)."""
        torch_npu = sys.modules.get("torch_npu")
        if torch_npu is not None:
            torch_npu.npu.empty_cache()

    @staticmethod
    def parse_devices(devices: int | str | list[int]) -> list[int]:
        """NPU indices from ``devices`` (see :func:`~segfm.accelerators.parse_npu_devices`)."""
        return parse_npu_devices(devices, runtime.visible_npu_count())

    @staticmethod
    def get_parallel_devices(devices: list[int]) -> list[torch.device]:
        """One ``npu:<index>`` device per index."""
        return [runtime.npu_device(i) for i in devices]

    @staticmethod
    def auto_device_count() -> int:
        """The visible NPUs (``devices: auto``)."""
        return runtime.visible_npu_count()

    @staticmethod
    def is_available() -> bool:
        """Whether torch_npu imports and sees an NPU."""
        return runtime.npu_is_available()

    @staticmethod
    def name() -> str:
        """The registry name, ``npu``."""
        return "npu"

    @classmethod
    def register_accelerators(cls, accelerator_registry: _AcceleratorRegistry) -> None:
        """Register as ``npu`` (replacing any earlier entry of that name)."""
        accelerator_registry.register(
            cls.name(), cls, description="Huawei Ascend NPUs (torch_npu)", override=True
        )
