"""Loss functions written in torch alone (no Lightning, no data)."""

from segfm.losses.infonce import CoarseInfoNCELoss, FineInfoNCELoss
from segfm.losses.supcon import SupConMeanLoss

__all__ = ["CoarseInfoNCELoss", "FineInfoNCELoss", "SupConMeanLoss"]
