"""Methods: one LightningModule per published training / inference recipe.

The methods are imported on first access (``segfm.methods.MedSAM``), so that the command line
lists them, and builds the one a config names, without importing every network. A new method
adds one line to :data:`_MODULES`.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

#: class name -> module of every method (the registry ``--model`` lists)
_MODULES = {
    "AnatomicalEmbedding": "segfm.methods.anatomical_embedding",
    "BaseTask": "segfm.methods.base",
    "BiomedParse": "segfm.methods.biomedparse",
    "MedSAM": "segfm.methods.medsam",
    "SAMMed3D": "segfm.methods.sam_med3d",
    "SegVol": "segfm.methods.segvol",
}

__all__ = list(_MODULES)


def __getattr__(name: str) -> Any:
    """Import a method on first access."""
    if name in _MODULES:
        return getattr(import_module(_MODULES[name]), name)
    msg = f"module 'segfm.methods' has no attribute {name!r}"
    raise AttributeError(msg)
