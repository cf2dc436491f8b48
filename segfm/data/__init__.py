"""Data modules: files on disk to samples of the Sample contract (:mod:`segfm.sample`).

The modules are imported on first access (``segfm.data.NpySliceDataModule``), so that the data
tools and the readers in :mod:`segfm.data.io` load without Lightning.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from segfm.data.base import BaseDataModule
    from segfm.data.biomedparse import BiomedParseDataModule
    from segfm.data.class_folders import ClassFolderDataModule
    from segfm.data.embedding_pairs import EmbeddingPairDataModule
    from segfm.data.m3d_seg import M3DSegDataModule
    from segfm.data.nnunet import NnUNetDataModule
    from segfm.data.npy_slices import NpySliceDataModule
    from segfm.data.npz import NpzDataModule
    from segfm.data.volumes import VolumeDataModule

__all__ = [
    "BaseDataModule",
    "BiomedParseDataModule",
    "ClassFolderDataModule",
    "EmbeddingPairDataModule",
    "M3DSegDataModule",
    "NnUNetDataModule",
    "NpySliceDataModule",
    "NpzDataModule",
    "VolumeDataModule",
]

_MODULES = {
    "BaseDataModule": "segfm.data.base",
    "BiomedParseDataModule": "segfm.data.biomedparse",
    "ClassFolderDataModule": "segfm.data.class_folders",
    "EmbeddingPairDataModule": "segfm.data.embedding_pairs",
    "M3DSegDataModule": "segfm.data.m3d_seg",
    "NnUNetDataModule": "segfm.data.nnunet",
    "NpySliceDataModule": "segfm.data.npy_slices",
    "NpzDataModule": "segfm.data.npz",
    "VolumeDataModule": "segfm.data.volumes",
}


def __getattr__(name: str) -> Any:
    """Import a data module on first access."""
    if name in _MODULES:
        return getattr(import_module(_MODULES[name]), name)
    msg = f"module 'segfm.data' has no attribute {name!r}"
    raise AttributeError(msg)
