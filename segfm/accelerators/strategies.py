"""NPU strategies: ``single_npu`` (one NPU) and ``ddp_npu`` (DDP over HCCL)."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins import CheckpointIO
from lightning.fabric.strategies.registry import _StrategyRegistry
from lightning.pytorch.plugins.precision import Precision
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy

from segfm.accelerators import runtime
from segfm.accelerators.devices import npu_index
from segfm.accelerators.precision import npu_precision
from segfm.errors import ConfigError


class _NPUPrecision:
    """Mixin: every precision plugin handed to the strategy autocasts on the NPU.

    Lightning hands the strategy a ``MixedPrecision`` for ``cuda`` when ``precision`` is a
    mixed string; the setter rebuilds it for ``npu`` (:func:`npu_precision`).
    """

    _precision_plugin: Precision | None

    @property
    def precision_plugin(self) -> Precision:
        """The precision plugin (plain fp32 when none was given)."""
        return self._precision_plugin if self._precision_plugin is not None else Precision()

    @precision_plugin.setter
    def precision_plugin(self, plugin: Precision | None) -> None:
        self._precision_plugin = None if plugin is None else npu_precision(plugin)


class SingleNPUStrategy(_NPUPrecision, SingleDeviceStrategy):
    """Training on one NPU (``strategy: single_npu``).

    Lightning would run one non-CUDA device on a CPU strategy; this one takes its NPU from the
    Trainer's ``devices`` (``devices: 1`` is ``npu:0``, ``devices: [3]`` is ``npu:3``) unless
    ``device`` names it.

    Args:
        device: The NPU (``3``, ``"npu:3"``); None takes it from ``devices``.
        accelerator: The accelerator (the Trainer sets it).
        checkpoint_io: Checkpoint reader / writer.
        precision_plugin: Precision plugin (moved onto the NPU).
    """

    strategy_name = "single_npu"

    def __init__(
        self,
        device: int | str | torch.device | None = None,
        accelerator: pl.accelerators.Accelerator | None = None,
        checkpoint_io: CheckpointIO | None = None,
        precision_plugin: Precision | None = None,
    ) -> None:
        # the parent wants a device now; the NPU one exists only once torch_npu is imported
        super().__init__("cpu", accelerator, checkpoint_io, precision_plugin)
        self._index: int | None = None if device is None else npu_index(device)

    @property
    def root_device(self) -> torch.device:
        """The NPU this strategy runs on."""
        return runtime.npu_device(0 if self._index is None else self._index)

    @property
    def parallel_devices(self) -> list[torch.device]:
        """The one NPU, or nothing before the Trainer has handed over its ``devices``."""
        return [] if self._index is None else [self.root_device]

    @parallel_devices.setter
    def parallel_devices(self, devices: list[torch.device]) -> None:
        if len(devices) != 1:
            msg = (
                f"strategy single_npu runs on one NPU, got {len(devices)} devices: "
                "use --trainer.strategy ddp_npu for several"
            )
            raise ConfigError(msg)
        self._index = npu_index(devices[0])

    @classmethod
    def register_strategies(cls, strategy_registry: _StrategyRegistry) -> None:
        """Register ``single_npu``."""
        strategy_registry.register(
            cls.strategy_name, cls, description="One Ascend NPU", override=True
        )


class DDPNPUStrategy(_NPUPrecision, DDPStrategy):
    """Distributed data parallel over Ascend NPUs, HCCL as the process-group backend.

    Every argument of Lightning's ``DDPStrategy`` applies (``find_unused_parameters`` and the
    other DDP options pass through ``kwargs``).

    Args:
        process_group_backend: ``hccl`` (Ascend's collective library).
        kwargs: ``DDPStrategy`` arguments.
    """

    strategy_name = "ddp_npu"

    def __init__(self, process_group_backend: str | None = "hccl", **kwargs: Any) -> None:
        super().__init__(process_group_backend=process_group_backend, **kwargs)

    @classmethod
    def register_strategies(cls, strategy_registry: _StrategyRegistry) -> None:
        """Register ``ddp_npu`` and ``ddp_npu_find_unused_parameters_true``."""
        strategy_registry.register(
            cls.strategy_name, cls, description="DDP on Ascend NPUs over HCCL", override=True
        )
        strategy_registry.register(
            f"{cls.strategy_name}_find_unused_parameters_true",
            cls,
            description="DDP on Ascend NPUs over HCCL, find_unused_parameters=True",
            override=True,
            find_unused_parameters=True,
        )
