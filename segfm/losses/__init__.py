"""Loss functions written in torch alone (no Lightning, no data)."""

from segfm.losses.dice_bce import dice_bce
from segfm.losses.infonce import CoarseInfoNCELoss, FineInfoNCELoss
from segfm.losses.supcon import SupConMeanLoss

__all__ = ["CoarseInfoNCELoss", "FineInfoNCELoss", "SupConMeanLoss", "dice_bce"]
