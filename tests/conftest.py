"""Shared fixtures of the test suite."""

from __future__ import annotations

from pathlib import Path

import pytest

# --- data: npy slices (tests/data/npy_slices/data.py) ----------------------------------------


@pytest.fixture(scope="session")
def npy_slices_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny npy-slices root (imgs/, gts/, npz/, labels.json), built once per session.

    Read-only: tests that damage files copy it first (``shutil.copytree``).
    """
    from tests.data.npy_slices.data import build

    return build(tmp_path_factory.mktemp("npy_slices"))


# --- end data: npy slices --------------------------------------------------------------------
