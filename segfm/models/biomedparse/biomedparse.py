"""BiomedParse v2 assembled: FocalNet, pixel decoder, BoltzFormer and text encoder.

Names follow the released ``biomedparse_v2.ckpt`` (``backbone.*``, ``sem_seg_head.pixel_decoder.*``,
``sem_seg_head.predictor.*`` with the text encoder under ``predictor.language_encoder``, and the
``pixel_mean`` / ``pixel_std`` buffers). Images are encoded once and every prompt is decoded on
the shared features.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from segfm.models.biomedparse.boltzformer import BoltzFormerTextDecoder
from segfm.models.biomedparse.focalnet import FocalNet
from segfm.models.biomedparse.pixel_decoder import TransformerEncoderPixelDecoder


class ImageFeatures(NamedTuple):
    """What the decoder needs of an image batch.

    Attributes:
        mask_features: ``[B, mask_dim, H/4, W/4]``.
        multi_scale: Three pixel-decoder levels ``[B, C, h_i, w_i]``, coarsest first.
    """

    mask_features: Tensor
    multi_scale: list[Tensor]


class BiomedParseOutput(NamedTuple):
    """Per image and prompt (``N = sum(num_prompts)``, image-major).

    Attributes:
        masks: Mask logits ``[N, 1, H/4, W/4]`` (mean of the non-edge queries).
        edges: Edge logits ``[N, 1, H/4, W/4]`` (mean of the edge queries), or None.
        existence: Existence logits ``[N, 1]``.
    """

    masks: Tensor
    edges: Tensor | None
    existence: Tensor


class MaskFormerHead(nn.Module):
    """The pixel decoder and the text decoder (``sem_seg_head``)."""

    def __init__(
        self, pixel_decoder: TransformerEncoderPixelDecoder, predictor: BoltzFormerTextDecoder
    ) -> None:
        super().__init__()
        self.pixel_decoder = pixel_decoder
        self.predictor = predictor


class BiomedParse(nn.Module):
    """BiomedParse v2 on 2.5D slices.

    Args:
        backbone: Image encoder.
        sem_seg_head: Pixel decoder and text-conditioned mask decoder.
        edge_queries: Last queries whose mean is the edge map (4 in v2; 0 for none).
        pixel_mean: Intensity mean (one value for all channels, as the original's gray scale).
        pixel_std: Intensity standard deviation.
    """

    def __init__(
        self,
        backbone: FocalNet,
        sem_seg_head: MaskFormerHead,
        edge_queries: int = 4,
        pixel_mean: float = 114.495,
        pixel_std: float = 57.63,
    ) -> None:
        super().__init__()
        queries = sem_seg_head.predictor.num_queries
        if not 0 <= edge_queries < queries:
            msg = f"edge_queries must be in [0, {queries}), got {edge_queries}"
            raise ValueError(msg)
        self.register_buffer("pixel_mean", torch.full((1, 3, 1, 1), float(pixel_mean)))
        self.register_buffer("pixel_std", torch.full((1, 3, 1, 1), float(pixel_std)))
        self.backbone = backbone
        self.sem_seg_head = sem_seg_head
        self.edge_queries = edge_queries

    @property
    def text_encoder(self) -> nn.Module:
        """The text encoder (stored under the predictor, as in the checkpoint)."""
        return self.sem_seg_head.predictor.language_encoder

    def encode_image(self, images: Tensor) -> ImageFeatures:
        """Features of slices.

        Args:
            images: 2.5D slices ``[B, 3, H, W]`` with intensities in 0..255.

        Returns:
            The decoder's inputs.
        """
        # the original normalises every channel with the channel-mean statistics
        x = (images - self.pixel_mean.mean()) / self.pixel_std.mean()
        feats = self.backbone(x)
        mask_features, multi_scale = self.sem_seg_head.pixel_decoder(
            [feats[k] for k in sorted(feats)]
        )
        return ImageFeatures(mask_features, multi_scale)

    def encode_text(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Grounding tokens ``[T, N, C]`` of ``N`` tokenised prompts ``[N, L]``."""
        return self.text_encoder(input_ids, attention_mask)[0]

    def decode(
        self,
        features: ImageFeatures,
        text: Tensor,
        num_prompts: Tensor | list[int],
        generator: torch.Generator | None = None,
    ) -> BiomedParseOutput:
        """Decode every prompt on its image's features.

        Args:
            features: From :meth:`encode_image` (``B`` images).
            text: Grounding tokens ``[T, N, C]``, image-major.
            num_prompts: Prompts per image (``B`` counts summing to ``N``).
            generator: Random generator of the Boltzmann sampling.

        Returns:
            Mask, edge and existence logits per prompt.
        """
        counts = torch.as_tensor(num_prompts, device=features.mask_features.device)
        if counts.numel() != features.mask_features.shape[0] or int(counts.sum()) != text.shape[1]:
            msg = (
                f"num_prompts {counts.tolist()} does not match {features.mask_features.shape[0]} "
                f"images and {text.shape[1]} prompts"
            )
            raise ValueError(msg)
        mask_features, multi_scale = features.mask_features, features.multi_scale
        prompts = int(counts[0]) if counts.numel() else 1
        if prompts == 0 or bool((counts != prompts).any()):
            # unequal counts: a copy of the image's features per prompt, as the original does
            mask_features = mask_features.repeat_interleave(counts, dim=0)
            multi_scale = [f.repeat_interleave(counts, dim=0) for f in multi_scale]
            prompts = 1
        masks, existence = self.sem_seg_head.predictor(
            multi_scale, mask_features, text, generator, prompts_per_image=prompts
        )
        edges = None
        if self.edge_queries:
            edges = masks[:, -self.edge_queries :].mean(1, keepdim=True)
            masks = masks[:, : -self.edge_queries]
        return BiomedParseOutput(masks.mean(1, keepdim=True), edges, existence)

    def forward(
        self,
        images: Tensor,
        input_ids: Tensor,
        attention_mask: Tensor,
        num_prompts: Tensor | list[int],
        generator: torch.Generator | None = None,
    ) -> BiomedParseOutput:
        """Segment ``num_prompts[b]`` tokenised prompts on each image ``b``.

        Args:
            images: ``[B, 3, H, W]`` in 0..255 (H, W multiples of 32; 512 for the weights).
            input_ids: Token ids ``[N, L]``, image-major.
            attention_mask: ``[N, L]``.
            num_prompts: Prompts per image.
            generator: Random generator of the Boltzmann sampling.

        Returns:
            Mask, edge and existence logits per prompt (masks at ``H/4 x W/4``).
        """
        features = self.encode_image(images)
        text = self.encode_text(input_ids, attention_mask)
        return self.decode(features, text, num_prompts, generator)
