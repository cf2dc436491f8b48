"""Hardware Lightning does not ship: Ascend NPUs (``accelerator: npu``).

Importing this package (``segfm.commands.trainer`` does) registers the ``npu`` accelerator and the
``single_npu``, ``ddp_npu`` and ``ddp_npu_find_unused_parameters_true`` strategies with
Lightning's registries. torch_npu is imported only when an NPU is asked for.
"""

from lightning.pytorch.accelerators import AcceleratorRegistry
from lightning.pytorch.strategies import StrategyRegistry

from segfm.accelerators.accelerator import NPUAccelerator
from segfm.accelerators.devices import npu_index, parse_npu_devices
from segfm.accelerators.precision import npu_precision
from segfm.accelerators.runtime import NPUUnavailableError, visible_npu_count
from segfm.accelerators.strategies import DDPNPUStrategy, SingleNPUStrategy

__all__ = [
    "DDPNPUStrategy",
    "NPUAccelerator",
    "NPUUnavailableError",
    "SingleNPUStrategy",
    "npu_index",
    "npu_precision",
    "parse_npu_devices",
    "register",
    "visible_npu_count",
]


def register() -> None:
    """Register the NPU accelerator and strategies with Lightning (done at import; idempotent)."""
    NPUAccelerator.register_accelerators(AcceleratorRegistry)
    SingleNPUStrategy.register_strategies(StrategyRegistry)
    DDPNPUStrategy.register_strategies(StrategyRegistry)


register()
