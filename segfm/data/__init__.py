"""Data modules: files on disk to samples of the Sample contract (:mod:`segfm.sample`).

One module per on-disk format, in :mod:`segfm.data.datamodules`; the readers and the checks of
each format are in :mod:`segfm.data.io`. ``_MODULES`` is the one registry: adding a format adds
its line there. The modules are imported on first access (``segfm.data.NpySliceDataModule``),
so that the data tools and the readers load without Lightning.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

#: data module class name -> the module that defines it (the CLI lists these for ``--data``)
_MODULES = {
    "BaseDataModule": "segfm.data.base",
    "ClassFolderDataModule": "segfm.data.datamodules.class_folders",
    "EmbeddingPairDataModule": "segfm.data.datamodules.embedding_pairs",
    "M3DSegDataModule": "segfm.data.datamodules.m3d_seg",
    "NnUNetDataModule": "segfm.data.datamodules.nnunet",
    "NpySliceDataModule": "segfm.data.datamodules.npy_slices",
    "NpzDataModule": "segfm.data.datamodules.npz",
    "PngSliceDataModule": "segfm.data.datamodules.png_slices",
    "VolumeDataModule": "segfm.data.datamodules.volumes",
}

__all__ = list(_MODULES)


def __getattr__(name: str) -> Any:
    """Import a data module on first access."""
    if name in _MODULES:
        return getattr(import_module(_MODULES[name]), name)
    msg = f"module 'segfm.data' has no attribute {name!r}"
    raise AttributeError(msg)
