"""Registration with Lightning, strategy and backend choice, precision on the NPU."""

from __future__ import annotations

import sys
import types

import pytest
from lightning.pytorch.accelerators import AcceleratorRegistry
from lightning.pytorch.plugins.precision import HalfPrecision, MixedPrecision, Precision
from lightning.pytorch.strategies import StrategyRegistry

import segfm.accelerators
from segfm.accelerators import DDPNPUStrategy, NPUAccelerator, SingleNPUStrategy, npu_precision
from segfm.errors import ConfigError
from tests.accelerators import fake_torch_npu


def test_registered_at_import_and_idempotent():
    segfm.accelerators.register()  # a second registration replaces, never fails
    assert AcceleratorRegistry["npu"]["accelerator"] is NPUAccelerator
    assert StrategyRegistry["single_npu"]["strategy"] is SingleNPUStrategy
    assert StrategyRegistry["ddp_npu"]["strategy"] is DDPNPUStrategy
    entry = StrategyRegistry["ddp_npu_find_unused_parameters_true"]
    assert entry["strategy"] is DDPNPUStrategy
    assert entry["init_params"] == {"find_unused_parameters": True}
    # Lightning's own entries are left alone
    assert StrategyRegistry["ddp"]["strategy"].__name__ == "DDPStrategy"


def test_cli_registers_at_start():
    import segfm.commands.trainer  # noqa: F401  (fit/validate/test/predict)

    assert "npu" in AcceleratorRegistry.available_accelerators()
    assert {"single_npu", "ddp_npu"} <= set(StrategyRegistry.available_strategies())


def test_ddp_npu_uses_hccl():
    strategy = StrategyRegistry.get("ddp_npu")
    assert isinstance(strategy, DDPNPUStrategy)
    assert strategy._get_process_group_backend() == "hccl"
    assert "find_unused_parameters" not in strategy._ddp_kwargs
    unused = StrategyRegistry.get("ddp_npu_find_unused_parameters_true")
    assert unused._get_process_group_backend() == "hccl"
    assert unused._ddp_kwargs == {"find_unused_parameters": True}
    assert DDPNPUStrategy(process_group_backend="gloo")._get_process_group_backend() == "gloo"


@pytest.mark.parametrize("strategy_cls", [SingleNPUStrategy, DDPNPUStrategy])
def test_strategies_move_mixed_precision_onto_the_npu(strategy_cls):
    strategy = strategy_cls()
    # what Lightning's connector hands over for precision="bf16-mixed" on a non-CPU device
    strategy.precision_plugin = MixedPrecision("bf16-mixed", device="cuda")
    plugin = strategy.precision_plugin
    assert type(plugin) is MixedPrecision
    assert plugin.device == "npu" and plugin.precision == "bf16-mixed" and plugin.scaler is None


def test_fp16_gets_torch_npu_grad_scaler(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_npu", fake_torch_npu.make())
    plugin = npu_precision(MixedPrecision("16-mixed", device="cpu", scaler=None))
    assert plugin.device == "npu"
    assert isinstance(plugin.scaler, fake_torch_npu.FakeGradScaler)


def test_other_precisions_unchanged():
    for plugin in (Precision(), HalfPrecision("bf16-true"), MixedPrecision("bf16-mixed", "npu")):
        assert npu_precision(plugin) is plugin
    strategy = DDPNPUStrategy()
    strategy.precision_plugin = None
    assert type(strategy.precision_plugin) is Precision


def test_accelerator_setup_fixes_precision_of_any_strategy(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_npu", fake_torch_npu.make())
    strategy = types.SimpleNamespace(precision_plugin=MixedPrecision("bf16-mixed", "cuda"))
    NPUAccelerator().setup(types.SimpleNamespace(strategy=strategy))  # e.g. plain "ddp"
    assert strategy.precision_plugin.device == "npu"


def test_single_npu_takes_one_device():
    strategy = SingleNPUStrategy()
    assert strategy.parallel_devices == []  # the Trainer hands its parsed devices over
    with pytest.raises(ConfigError, match="ddp_npu"):
        strategy.parallel_devices = ["npu:0", "npu:1"]
    strategy.parallel_devices = ["npu:3"]
    assert strategy._index == 3
    assert SingleNPUStrategy(device="npu:5")._index == 5


def test_accelerator_refuses_a_cpu_device(monkeypatch):
    import torch

    fake = fake_torch_npu.make()
    monkeypatch.setitem(sys.modules, "torch_npu", fake)
    accelerator = NPUAccelerator()
    # Lightning's default strategy for one non-CUDA device is a CPU one
    with pytest.raises(ConfigError, match="single_npu"):
        accelerator.setup_device(torch.device("cpu"))
    assert fake.calls == []
    accelerator.teardown()
    assert fake.calls == [("empty_cache", None)]
    assert accelerator.get_device_stats(0) == {"allocated_bytes.all.current": 0}
