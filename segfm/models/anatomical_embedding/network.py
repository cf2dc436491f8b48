"""The anatomical embedding network: a ResNet3d with a local, a global and a semantic head."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from segfm.models.anatomical_embedding.fpn3d import FPN3d
from segfm.models.anatomical_embedding.resnet3d import ResNet3d

#: stride ``(z, y, x)`` of the ``fine`` (and ``semantic``) embeddings
FINE_STRIDE = (2, 2, 2)
#: stride ``(z, y, x)`` of the ``coarse`` embeddings
COARSE_STRIDE = (4, 16, 16)


class AnatomicalEmbeddingNet(nn.Module):
    """SAM / SAM++ / Cross-SAM: every voxel to an L2-normalised embedding.

    The sub-networks are injected and named as in the released checkpoints: ``backbone``
    (:class:`ResNet3d`), ``neck`` (local head on ``layer1``-``layer3``), ``read_out_head``
    (global head on ``layer4``) and, for SAM++ and Cross-SAM, ``semantic_head`` (a second local
    head). The original casts the outputs to float16; here they keep the input's precision
    (the HDF5 export stores float16).

    Args:
        backbone: The ResNet3d.
        neck: FPN3d over the first three stages (``fine``, stride 2x2x2).
        read_out_head: FPN3d over the last stage (``coarse``, stride 4x16x16).
        semantic_head: FPN3d over the first three stages (``semantic``), or None.
    """

    def __init__(
        self,
        backbone: ResNet3d,
        neck: FPN3d,
        read_out_head: FPN3d,
        semantic_head: FPN3d | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.neck = neck
        self.read_out_head = read_out_head
        if semantic_head is not None:
            self.semantic_head = semantic_head

    @property
    def has_semantic(self) -> bool:
        """Whether the network has the SAM++ semantic head."""
        return hasattr(self, "semantic_head")

    @property
    def embed_dim(self) -> int:
        """Channels of the embeddings."""
        return int(self.neck.fpn_convs[0].conv.out_channels)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Embed a batch of volumes.

        Args:
            x: Images ``[B, 1, D, H, W]``; ``D`` a multiple of 4 and ``H``, ``W`` of 16 give
                exact strides (:func:`~segfm.inference.embedding.embed_volume`
                pads to them).

        Returns:
            ``fine`` ``[B, E, D/2, H/2, W/2]``, ``coarse`` ``[B, E, D/4, H/16, W/16]`` and, with a
            semantic head, ``semantic`` ``[B, E, D/2, H/2, W/2]``; unit norm along ``E``.
        """
        feats = self.backbone(x)
        out = {
            "fine": F.normalize(self.neck(feats[:3]), dim=1),
            "coarse": F.normalize(self.read_out_head([feats[3]]), dim=1),
        }
        if self.has_semantic:
            out["semantic"] = F.normalize(self.semantic_head(feats[:3]), dim=1)
        return out
