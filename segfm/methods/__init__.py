"""Methods: one LightningModule per published training / inference recipe."""

from segfm.methods.base import BaseTask
from segfm.methods.medsam import MedSAM
from segfm.methods.sam_med3d import SAMMed3D

__all__ = ["BaseTask", "MedSAM", "SAMMed3D"]
