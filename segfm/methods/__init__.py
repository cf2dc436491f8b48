"""Methods: one LightningModule per published training / inference recipe."""

from segfm.methods.anatomical_embedding import AnatomicalEmbedding
from segfm.methods.base import BaseTask
from segfm.methods.biomedparse import BiomedParse
from segfm.methods.medsam import MedSAM
from segfm.methods.sam_med3d import SAMMed3D
from segfm.methods.segvol import SegVol

__all__ = ["AnatomicalEmbedding", "BaseTask", "BiomedParse", "MedSAM", "SAMMed3D", "SegVol"]
