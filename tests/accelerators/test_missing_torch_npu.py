"""Without torch_npu: configs still parse, and asking for an NPU fails with one clear line."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from segfm.accelerators import NPUAccelerator, NPUUnavailableError
from segfm.accelerators.runtime import require_npu
from segfm.cli import main
from tests.accelerators import fake_torch_npu

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "tests" / "conf" / "medsam_npy_slices.yaml"
NPU_CONFIGS = [
    ROOT / "configs" / "trainer" / "npu.yaml",
    ROOT / "configs" / "trainer" / "ddp_npu.yaml",
]


@pytest.fixture
def no_torch_npu(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_npu", None)  # `import torch_npu` now fails


def test_accelerator_names_the_install_command(no_torch_npu):
    assert NPUAccelerator.is_available() is False
    with pytest.raises(NPUUnavailableError) as err:
        NPUAccelerator()
    message = str(err.value)
    assert "pip install torch_npu" in message and "\n" not in message


def test_broken_or_deviceless_torch_npu(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_npu", fake_torch_npu.make(available=False))
    with pytest.raises(NPUUnavailableError, match="sees no NPU"):
        require_npu()
    assert NPUAccelerator.is_available() is False

    def broken():
        raise ImportError("libascendcl.so: cannot open shared object file")

    monkeypatch.setattr("segfm.accelerators.runtime._import_torch_npu", broken)
    with pytest.raises(NPUUnavailableError, match=r"does not import \(libascendcl.so.*set_env.sh"):
        require_npu()


@pytest.mark.parametrize("trainer", NPU_CONFIGS, ids=lambda p: p.name)
def test_npu_configs_parse_without_torch_npu(trainer, no_torch_npu, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(TINY), "--trainer", str(trainer), "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)["trainer"]
    for key, value in yaml.safe_load(trainer.read_text()).items():
        assert printed[key] == value


def test_ascend_recipe_parses_without_torch_npu(no_torch_npu, capsys):
    config = ROOT / "configs" / "medsam" / "ascend_8npu.yaml"
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    trainer = printed["trainer"]
    assert trainer["accelerator"] == "npu" and trainer["devices"] == 8
    assert trainer["strategy"] == "ddp_npu_find_unused_parameters_true"
    assert trainer["accumulate_grad_batches"] == 4 and trainer["precision"] == "32-true"
    assert printed["data"]["init_args"]["batch_size"] == 4
    assert printed["model"]["init_args"]["lr"] == 1e-4


def test_cli_run_on_npu_without_torch_npu_is_one_line(
    no_torch_npu, npy_slices_root, tmp_path, capsys
):
    args = [
        "fit",
        "--config",
        str(TINY),
        "--data.init_args.root",
        str(npy_slices_root),
        "--trainer",
        str(NPU_CONFIGS[0]),
        "--trainer.logger.init_args.save_dir",
        str(tmp_path),
    ]
    with pytest.raises(NPUUnavailableError, match="pip install torch_npu"):
        main(args)
    error = capsys.readouterr().err.splitlines()
    assert error[0].startswith("segfm: error: accelerator 'npu' needs torch_npu")
    assert "Traceback" not in "".join(error)
    assert not list(tmp_path.rglob("*.ckpt"))
