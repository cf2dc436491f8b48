"""Methods: one LightningModule per published training / inference recipe."""

from segfm.methods.base import BaseTask
from segfm.methods.medsam import MedSAM

__all__ = ["BaseTask", "MedSAM"]
