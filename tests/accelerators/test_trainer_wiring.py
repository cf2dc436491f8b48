"""Lightning's Trainer builds the right NPU objects (no NPU here: nothing is run on one).

The check runs in a child process that names torch's private device type ``npu`` (as torch_npu
does on import) and puts the stand-in of ``fake_torch_npu`` in place of torch_npu, so that
``torch.device("npu", i)`` exists; the Trainer is only constructed, never fitted.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import sys
    import warnings

    import torch
    import yaml

    warnings.filterwarnings("ignore")
    torch.utils.rename_privateuse1_backend("npu")
    from tests.accelerators import fake_torch_npu

    sys.modules["torch_npu"] = fake_torch_npu.make(count=8)
    import segfm.accelerators  # noqa: F401
    from lightning.pytorch import Trainer
    from lightning.pytorch.plugins.precision import MixedPrecision

    from segfm.errors import ConfigError

    quiet = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False}
    npu = [torch.device("npu", i) for i in range(8)]

    # the Ascend recipe's trainer section, as configs/medsam/ascend_8npu.yaml gives it
    recipe = yaml.safe_load(open("configs/medsam/ascend_8npu.yaml"))["trainer"]
    recipe = {k: v for k, v in recipe.items() if k not in ("logger", "callbacks")}
    t = Trainer(**recipe, **quiet)
    s = t.strategy
    assert type(s).__name__ == "DDPNPUStrategy", s
    assert s.parallel_devices == npu and s.root_device == npu[0]
    assert s._get_process_group_backend() == "hccl"
    assert s._ddp_kwargs == {"find_unused_parameters": True}
    assert t.accumulate_grad_batches == 4 and t.num_devices == 8
    assert type(t.precision_plugin).__name__ == "Precision"

    # ddp_npu on two named NPUs with bf16 autocast on the NPU
    npu_run = {"accelerator": "npu", **quiet}
    t = Trainer(strategy="ddp_npu", devices="2,5", precision="bf16-mixed", **npu_run)
    assert t.strategy.parallel_devices == [npu[2], npu[5]]
    assert isinstance(t.precision_plugin, MixedPrecision) and t.precision_plugin.device == "npu"

    # single_npu takes its NPU from devices; fp16 gets torch_npu's scaler
    t = Trainer(strategy="single_npu", devices=[3], precision="16-mixed", **npu_run)
    assert t.strategy.root_device == npu[3] and t.device_ids == [3]
    assert t.precision_plugin.device == "npu"
    assert isinstance(t.precision_plugin.scaler, fake_torch_npu.FakeGradScaler)

    # Lightning's own choice for one NPU is a CPU strategy: refused when the run starts
    t = Trainer(accelerator="npu", devices=1, **quiet)
    assert t.strategy.root_device.type == "cpu"
    try:
        t.strategy.setup_environment()
    except ConfigError as err:
        assert "single_npu" in str(err)
    else:
        raise AssertionError("a CPU device was accepted for accelerator npu")

    # more NPUs than visible
    try:
        Trainer(accelerator="npu", strategy="ddp_npu", devices=9, **quiet)
    except ConfigError as err:
        assert "8 NPU" in str(err)
    else:
        raise AssertionError("9 of 8 NPUs accepted")
    print("wired")
    """
)


def test_trainer_builds_npu_strategies_and_precision():
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("wired")
