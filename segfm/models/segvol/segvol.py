"""SegVol: a 3D ViT, a CLIP text encoder, SAM's prompt encoder and a text-aware decoder."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from segfm.models.segvol.image_encoder import SegVolViT
from segfm.models.segvol.mask_decoder import SegVolMaskDecoder
from segfm.models.segvol.prompt_encoder import SegVolPromptEncoder
from segfm.models.segvol.text_encoder import TextEncoder

Points = tuple[Tensor, Tensor]


class SegVol(nn.Module):
    """Universal, promptable volumetric segmentation (Du et al., 2023).

    The network of SegVol's ``network/model.py`` with the same parameter names, split so that a
    volume is encoded once (:meth:`encode`) and any number of prompt sets are decoded on its
    embedding (:meth:`decode`); the original re-ran the ViT for every category.

    Args:
        image_encoder: 3D ViT of ``[B, 1, *roi]`` volumes to ``[B, C, *g]`` embeddings.
        prompt_encoder: Encoder of points, boxes and text tokens.
        mask_decoder: Decoder of low-res masks ``[N, 1, *4g]``.
        text_encoder: CLIP text encoder giving ``[N, C]`` tokens.
    """

    def __init__(
        self,
        image_encoder: SegVolViT,
        prompt_encoder: SegVolPromptEncoder,
        mask_decoder: SegVolMaskDecoder,
        text_encoder: TextEncoder,
    ) -> None:
        super().__init__()
        grid = tuple(image_encoder.embedding_size)
        if (
            tuple(prompt_encoder.image_embedding_size) != grid
            or tuple(mask_decoder.image_embedding_size) != grid
            or tuple(prompt_encoder.input_image_size) != tuple(image_encoder.img_size)
        ):
            msg = (
                f"the image encoder ({image_encoder.img_size} -> grid {grid}), prompt encoder "
                f"({prompt_encoder.input_image_size} -> {prompt_encoder.image_embedding_size}) "
                f"and mask decoder (grid {mask_decoder.image_embedding_size}) disagree"
            )
            raise ValueError(msg)
        self.image_encoder = image_encoder
        self.mask_decoder = mask_decoder
        self.prompt_encoder = prompt_encoder
        self.text_encoder = text_encoder

    @property
    def roi_size(self) -> tuple[int, ...]:
        """Input size ``(D, H, W)`` of the encoder (the window of sliding-window inference)."""
        return tuple(self.image_encoder.img_size)

    def encode(self, image: Tensor) -> Tensor:
        """Image embeddings ``[B, C, *g]`` of volumes ``[B, 1, *roi_size]``."""
        return self.image_encoder(image)

    def embed_text(self, names: Sequence[str]) -> Tensor:
        """Text tokens ``[N, C]`` of class names (frozen encoder, no gradient)."""
        return self.text_encoder(list(names))

    def decode(
        self,
        embeddings: Tensor,
        text_embedding: Tensor | None = None,
        points: Points | None = None,
        boxes: Tensor | None = None,
    ) -> Tensor:
        """Low-res logits of one prompt set per row.

        Args:
            embeddings: Image embeddings ``[N, C, *g]``, one per prompt set (index or expand
                the output of :meth:`encode`).
            text_embedding: Text tokens ``[N, C]`` (:meth:`embed_text`), or None.
            points: Voxel indices ``[N, P, 3]`` in ``(d, h, w)`` and labels ``[N, P]``
                (1 positive, 0 negative, -1 padding), or None.
            boxes: ``[N, 6]`` as ``(d0, h0, w0, d1, h1, w1)``, corners inclusive, or None.

        Returns:
            Mask logits ``[N, 1, *4g]``.
        """
        if text_embedding is None and points is None and boxes is None:
            msg = "decode needs at least one prompt: text, points or boxes"
            raise ValueError(msg)
        sparse, dense = self.prompt_encoder(
            points=points, boxes=boxes, text_embedding=text_embedding
        )
        logits, _ = self.mask_decoder(
            image_embeddings=embeddings,
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            text_embedding=text_embedding,
            multimask_output=False,
        )
        return logits

    @staticmethod
    def postprocess(low: Tensor, size: Sequence[int]) -> Tensor:
        """Low-res logits ``[N, 1, *4g]`` to ``[N, 1, *size]`` (trilinear, as SegVol)."""
        return F.interpolate(low, size=tuple(size), mode="trilinear", align_corners=False)

    def forward(
        self,
        image: Tensor,
        text: Sequence[str] | None = None,
        points: Points | None = None,
        boxes: Tensor | None = None,
    ) -> Tensor:
        """Encode ``[B, 1, *roi_size]`` and decode one prompt set per volume.

        Args:
            image: Volumes ``[B, 1, *roi_size]``.
            text: ``B`` class names, or None.
            points: ``[B, P, 3]`` and ``[B, P]``, or None.
            boxes: ``[B, 6]``, or None.

        Returns:
            Logits ``[B, 1, *roi_size]``.
        """
        embeddings = self.encode(image)
        text_embedding = None if text is None else self.embed_text(text)
        low = self.decode(embeddings, text_embedding, points, boxes)
        return self.postprocess(low, image.shape[2:])
