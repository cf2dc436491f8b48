"""Parsing of the Trainer's ``devices`` for NPUs, and the visible NPU count."""

from __future__ import annotations

import sys

import pytest
import torch

from segfm.accelerators import NPUAccelerator, npu_index, parse_npu_devices, visible_npu_count
from segfm.accelerators.runtime import visible_device_ids
from segfm.errors import ConfigError
from tests.accelerators import fake_torch_npu


@pytest.mark.parametrize(
    ("devices", "expected"),
    [
        (8, list(range(8))),
        (2, [0, 1]),
        (-1, list(range(8))),
        ("-1", list(range(8))),
        ("auto", list(range(8))),
        ("4", [0, 1, 2, 3]),
        ("0,1", [0, 1]),
        ("3,", [3]),
        (" 2, 5 ", [2, 5]),
        ([6, 7], [6, 7]),
        ((3,), [3]),
    ],
)
def test_parse_devices(devices, expected):
    assert parse_npu_devices(devices, available=8) == expected


@pytest.mark.parametrize("devices", [0, "0", -2, "x", "0,a", [], [1, 1], [-1], True])
def test_parse_devices_rejects_malformed(devices):
    with pytest.raises(ConfigError, match="not an NPU selection"):
        parse_npu_devices(devices, available=8)


@pytest.mark.parametrize("devices", [9, "0,8", [8], -1])
def test_parse_devices_rejects_missing_npus(devices, monkeypatch):
    monkeypatch.setenv("ASCEND_RT_VISIBLE_DEVICES", "0,1,2,3,4,5,6,7")
    available = 0 if devices == -1 else 8
    with pytest.raises(ConfigError, match="ASCEND_RT_VISIBLE_DEVICES=0,1,2,3,4,5,6,7") as err:
        parse_npu_devices(devices, available=available)
    assert "\n" not in str(err.value)


def test_visible_devices_env(monkeypatch):
    monkeypatch.delenv("ASCEND_RT_VISIBLE_DEVICES", raising=False)
    assert visible_device_ids() is None
    monkeypatch.setenv("ASCEND_RT_VISIBLE_DEVICES", "4, 5,6")
    assert visible_device_ids() == [4, 5, 6]
    for bad in ("4,4", "npu0"):
        monkeypatch.setenv("ASCEND_RT_VISIBLE_DEVICES", bad)
        with pytest.raises(ConfigError, match="ASCEND_RT_VISIBLE_DEVICES"):
            visible_device_ids()


def test_count_without_torch_npu_follows_the_env(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_npu", None)  # not installed
    monkeypatch.delenv("ASCEND_RT_VISIBLE_DEVICES", raising=False)
    assert visible_npu_count() == 0
    monkeypatch.setenv("ASCEND_RT_VISIBLE_DEVICES", "4,5")
    assert visible_npu_count() == 2
    assert NPUAccelerator.parse_devices("0,1") == [0, 1]  # indices within the visible NPUs
    with pytest.raises(ConfigError, match="2 NPU"):
        NPUAccelerator.parse_devices(4)


def test_count_with_torch_npu_asks_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_npu", fake_torch_npu.make(count=4))
    monkeypatch.setenv("ASCEND_RT_VISIBLE_DEVICES", "0,1,2,3,4,5,6,7")  # torch_npu applies it
    assert visible_npu_count() == NPUAccelerator.auto_device_count() == 4
    assert NPUAccelerator.parse_devices(-1) == [0, 1, 2, 3]


@pytest.mark.parametrize(
    ("device", "index"), [(3, 3), ("3", 3), ("npu:2", 2), ("npu", 0), (torch.device("meta"), None)]
)
def test_npu_index(device, index):
    if index is None:
        with pytest.raises(ConfigError, match="not an NPU"):
            npu_index(device)
    else:
        assert npu_index(device) == index


@pytest.mark.parametrize("device", ["cuda:0", "cpu", "npu:x", -1])
def test_npu_index_rejects_other_devices(device):
    with pytest.raises(ConfigError, match="not an NPU"):
        npu_index(device)
