"""Shared fixtures of the test suite."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _help_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test keeps rendered help texts in its own folder, never in the user's cache."""
    monkeypatch.setenv("SEGFM_CACHE", str(tmp_path / "cache"))


# --- data: npy slices (tests/data/npy_slices/data.py) ----------------------------------------


@pytest.fixture(scope="session")
def npy_slices_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny npy-slices root (imgs/, gts/, npz/, labels.json), built once per session.

    Read-only: tests that damage files copy it first (``shutil.copytree``).
    """
    from tests.data.npy_slices.data import build

    return build(tmp_path_factory.mktemp("npy_slices"))


# --- end data: npy slices --------------------------------------------------------------------


# --- data: nnU-Net raw and class folders (tests/data/nnunet/data.py) --------------------------


@pytest.fixture(scope="session")
def nnunet_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Both tiny 3D datasets, built once per session: (nnU-Net root, class-folder root)."""
    from tests.data.nnunet.data import build

    return build(tmp_path_factory.mktemp("nnunet"))


@pytest.fixture(scope="session")
def nnunet_root(nnunet_data: tuple[Path, Path]) -> Path:
    """A tiny nnU-Net raw dataset: 6 CT cases, splits_final.json (2 folds), 2 imagesTs cases.

    Treat as read-only (give the data modules a ``cache_dir`` under ``tmp_path``); tests that
    damage files copy it first (``shutil.copytree``).
    """
    return nnunet_data[0]


@pytest.fixture(scope="session")
def class_folder_root(nnunet_data: tuple[Path, Path]) -> Path:
    """A tiny SAM-Med3D class-folder root: kidney_left/ and liver/, each ct_synth/ + mr_synth/."""
    return nnunet_data[1]


# --- end data: nnU-Net raw and class folders --------------------------------------------------


# --- data: CVPR 2025 npz layout (tests/data/npz/data.py) ------------------------------------


@pytest.fixture(scope="session")
def npz_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny CVPR 2025 npz root (3 datasets, train/ and test/ + test_mask/), built once.

    Read-only: tests that damage files copy it first (``shutil.copytree``).
    """
    from tests.data.npz.data import build

    return build(tmp_path_factory.mktemp("npz"))


# --- end data: CVPR 2025 npz layout ----------------------------------------------------------
