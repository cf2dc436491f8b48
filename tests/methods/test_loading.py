"""A ready method from a fit checkpoint, or from init arguments and an official file."""

from __future__ import annotations

import pytest
import torch

from segfm.checkpoints.sam_med3d import save_official
from segfm.errors import CheckpointError, ConfigError
from segfm.methods import SAMMed3D
from segfm.methods.loading import method_class, method_from_checkpoint, method_from_config


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_from_a_fit_checkpoint(tmp_path) -> None:
    torch.manual_seed(0)
    trained = SAMMed3D(arch="tiny", image_size=32, output_dir=str(tmp_path / "out"))
    hparams = dict(trained.hparams) | {"_class_path": "segfm.methods.SAMMed3D"}
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": trained.state_dict(), "hyper_parameters": hparams}, path)
    method = method_from_checkpoint(path, "cpu")
    assert isinstance(method, SAMMed3D) and not method.training
    assert method.hparams["output_dir"] is None and not method.hparams["export_official"]
    assert method.evaluation.save_predictions is False
    _same_weights(method, trained)
    torch.save({"state_dict": trained.state_dict()}, tmp_path / "bare.ckpt")
    with pytest.raises(CheckpointError, match="for an official file use --method"):
        method_from_checkpoint(tmp_path / "bare.ckpt")


def test_from_an_official_file(tmp_path) -> None:
    torch.manual_seed(1)
    released = SAMMed3D(arch="tiny", image_size=32)
    official = save_official(released.model, tmp_path / "sam_med3d_tiny.pth")
    args = {"arch": "tiny", "image_size": 32}
    method = method_from_config("SAMMed3D", args, str(official), "cpu")
    _same_weights(method, released)
    other = method_from_config("segfm.methods.SAMMed3D", args, None, "cpu")
    with pytest.raises(AssertionError):
        _same_weights(other, released)  # without the file: fresh weights
    with pytest.raises(CheckpointError, match="does not exist"):
        method_from_config("SAMMed3D", args, str(tmp_path / "missing.pth"))
    with pytest.raises(ConfigError, match="unknown method 'SAM3D'; choose one of"):
        method_class("SAM3D")
    with pytest.raises(ConfigError, match="image_sze"):
        method_from_config("SAMMed3D", {"image_sze": 32})
