"""``segfm serve`` as a user starts it: a process, a port, a run folder and nothing else written."""

from __future__ import annotations

import gzip
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import torch

from segfm.cli import main
from segfm.data.io.nifti import write_nifti
from segfm.errors import CheckpointError, ConfigError
from segfm.methods import SAMMed3D
from segfm.serve.codec import unpack_mask
from tests.serve.conftest import _free_port


def _checkpoint(path: Path) -> Path:
    torch.manual_seed(0)
    method = SAMMed3D(arch="tiny", image_size=32)
    hparams = dict(method.hparams) | {"_class_path": "segfm.methods.SAMMed3D"}
    torch.save({"state_dict": method.state_dict(), "hyper_parameters": hparams}, path)
    return path


def test_serve_writes_only_its_run_folder(tmp_path: Path) -> None:
    ckpt = _checkpoint(tmp_path / "last.ckpt")
    cwd, scratch, run = tmp_path / "cwd", tmp_path / "tmpdir", tmp_path / "run"
    cwd.mkdir()
    scratch.mkdir()
    port = _free_port()
    env = os.environ | {"TMPDIR": str(scratch), "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "segfm", "serve", "--ckpt_path", str(ckpt)]
    command += ["--port", str(port), "--run_dir", str(run), "--max_upload_mb", "64"]
    process = subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                info = requests.get(f"{url}/api/info", timeout=1).json()
                break
            except requests.ConnectionError:
                assert process.poll() is None, process.stdout.read()
                assert time.monotonic() < deadline, "segfm serve did not start in 120 s"
                time.sleep(0.2)
        assert info["method"] == "SAMMed3D" and info["prompts"] == ["point", "box"]
        assert requests.get(url).text.lstrip().lower().startswith("<!doctype html>")

        # an npy over the 1 MiB that multipart spools to disk, a NIfTI, a prompt, a download
        volume = np.random.default_rng(0).normal(0, 1, (24, 96, 96)).astype(np.float32)
        buffer = io.BytesIO()
        np.save(buffer, volume)
        files = {"file": ("volume.npy", buffer.getvalue(), "application/octet-stream")}
        assert requests.post(f"{url}/upload_image", files=files).json() == {"status": "ok"}
        nifti = tmp_path / "case.nii.gz"
        affine = np.diag([0.7, 0.7, 2.5, 1.0])
        write_nifti(nifti, volume[:, :40, :40], affine)
        files = {"file": ("case.nii.gz", nifti.read_bytes(), "application/gzip")}
        loaded = requests.post(f"{url}/api/load", files=files).json()
        assert loaded["shape"] == [24, 40, 40] and loaded["spacing"] == [2.5, 0.7, 0.7]
        body = {"voxel_coord": [12, 20, 20], "positive_click": True}
        answer = requests.post(f"{url}/add_point_interaction", json=body)
        mask = unpack_mask(answer.content, (24, 40, 40))
        assert float(answer.headers["X-Segfm-Seconds"]) > 0
        download = requests.get(f"{url}/api/mask.nii.gz")
        assert download.headers["content-disposition"].endswith('"case_mask.nii.gz"')
        assert gzip.decompress(download.content)[:4] in (b"\x5c\x01\x00\x00", b"\x00\x00\x01\x5c")
        assert int(mask.sum()) >= 0
    finally:
        process.send_signal(signal.SIGINT)
        out, _ = process.communicate(timeout=30)
    assert process.returncode == 0, out
    assert "SAMMed3D on cpu ready in" in out and f"listening on http://127.0.0.1:{port}" in out
    log = (run / "serve.log").read_text()
    assert "ready in" in log and "/add_point_interaction 200 in" in log
    assert "image case.nii.gz: shape [24, 40, 40], spacing [2.5, 0.7, 0.7]" in log
    assert list(cwd.iterdir()) == [] and list(scratch.iterdir()) == []
    written = {p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file()}
    assert written == {"serve.log"}  # uploads, downloads and spooled files were removed


def test_serve_needs_exactly_one_model(tmp_path: Path) -> None:
    for args in ([], ["--ckpt_path", "a.ckpt", "--method", "SAMMed3D"]):
        with pytest.raises(ConfigError, match=r"name the model once: --ckpt_path X\.ckpt"):
            main(["serve", "--run_dir", str(tmp_path / "run"), *args])
    assert not (tmp_path / "run").exists()  # a failed start leaves no run folder
    with pytest.raises(CheckpointError, match=r"missing\.ckpt"):
        main(["serve", "--ckpt_path", str(tmp_path / "missing.ckpt"), "--run_dir", str(tmp_path)])


def test_a_config_and_an_official_file(tmp_path: Path) -> None:
    """``--config`` gives the method and its init arguments, ``--checkpoint`` the weights."""
    from segfm.checkpoints.sam_med3d import save_official
    from segfm.commands.serve import _method

    torch.manual_seed(3)
    released = SAMMed3D(arch="tiny", image_size=32)
    official = save_official(released.model, tmp_path / "official.pth")
    config = tmp_path / "eval.yaml"
    config.write_text(
        "model:\n  class_path: segfm.methods.SAMMed3D\n  init_args:\n"
        "    arch: tiny\n    image_size: 32\n    checkpoint: elsewhere.pth\n"
    )
    method = _method(None, None, None, str(official), str(config), "cpu")
    assert isinstance(method, SAMMed3D) and not method.training
    for key, value in released.state_dict().items():
        assert torch.equal(method.state_dict()[key], value), key
    with pytest.raises(ConfigError, match="--checkpoint needs --method"):
        _method(None, None, None, str(official), None, "cpu")
