"""SegVol's mask decoder: SAM's 3D decoder plus a text-similarity map added to the mask."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from segfm.models.mask_decoder import MaskDecoder


class SegVolMaskDecoder(MaskDecoder):
    """SegVol's ``MaskDecoder`` (same parameter names).

    As SAM's 3D decoder, with two differences:

    - ``txt_align_upscaled_embedding`` maps the text token to the upscaled feature width; its
      dot product with the upscaled features (a similarity map) is added to every mask logit.
    - Compatibility quirk of the released weights: the LayerNorm after the first transposed
      convolution normalises over channels *and* space, with affine parameters of the fixed
      shape ``(C/4, *2g)`` (``(192, 16, 32, 32)`` for the 32x256x256 input). The decoder, and so
      the network, only accepts embeddings of the grid it was built for.

    Args:
        transformer_dim: Token width (768).
        transformer: Two-way transformer of that width.
        image_embedding_size: Grid ``g`` of the image embedding, ``(D, H, W)``.
        num_multimask_outputs: Ambiguity masks (3; SegVol uses the single-mask output).
        iou_head_depth: Layers of the IoU head.
        iou_head_hidden_dim: Hidden width of the IoU head.
    """

    def __init__(
        self,
        transformer_dim: int,
        transformer: nn.Module,
        image_embedding_size: Sequence[int],
        num_multimask_outputs: int = 3,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
    ) -> None:
        super().__init__(
            spatial_dims=3,
            transformer_dim=transformer_dim,
            transformer=transformer,
            num_multimask_outputs=num_multimask_outputs,
            iou_head_depth=iou_head_depth,
            iou_head_hidden_dim=iou_head_hidden_dim,
        )
        self.image_embedding_size = tuple(int(s) for s in image_embedding_size)
        grid2 = tuple(2 * s for s in self.image_embedding_size)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose3d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            nn.LayerNorm((transformer_dim // 4, *grid2)),
            nn.GELU(),
            nn.ConvTranspose3d(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.txt_align_upscaled_embedding = nn.Linear(transformer_dim, transformer_dim // 8)

    def forward(  # type: ignore[override]
        self,
        image_embeddings: Tensor,
        image_pe: Tensor,
        sparse_prompt_embeddings: Tensor,
        dense_prompt_embeddings: Tensor,
        text_embedding: Tensor | None = None,
        multimask_output: bool = False,
    ) -> tuple[Tensor, Tensor]:
        """Predict masks.

        Args:
            image_embeddings: One image embedding per prompt set ``[N, C, *g]``.
            image_pe: Positional encoding of the grid ``[1, C, *g]``.
            sparse_prompt_embeddings: Prompt tokens ``[N, P, C]``.
            dense_prompt_embeddings: ``[N, C, *g]``.
            text_embedding: Text tokens ``[N, C]`` (the similarity term), or None.
            multimask_output: Return the ambiguity masks instead of the single mask.

        Returns:
            Low-res mask logits ``[N, M, *4g]`` and IoU predictions ``[N, M]``.
        """
        n = sparse_prompt_embeddings.shape[0]
        if image_embeddings.shape[0] != n or dense_prompt_embeddings.shape[0] != n:
            msg = (
                "image_embeddings, sparse and dense prompt embeddings need one row per prompt set, "
                f"got {image_embeddings.shape[0]}, {n} and {dense_prompt_embeddings.shape[0]}"
            )
            raise ValueError(msg)
        if tuple(image_embeddings.shape[2:]) != self.image_embedding_size:
            msg = (
                f"this decoder was built for embeddings of grid {self.image_embedding_size} "
                f"(its LayerNorm has a fixed shape), got {tuple(image_embeddings.shape[2:])}"
            )
            raise ValueError(msg)
        src = image_embeddings + dense_prompt_embeddings
        output_tokens = self.output_tokens(n)
        tokens = torch.cat([output_tokens, sparse_prompt_embeddings], dim=1)  # [N, 1 + T + P, C]
        hs, src = self.transformer(src, image_pe, tokens)
        mask_tokens_out = hs[:, 1 : 1 + self.num_mask_tokens]
        src = src.transpose(1, 2).reshape(n, self.transformer_dim, *self.image_embedding_size)
        upscaled = self.output_upscaling(src).flatten(2)  # [N, C/8, prod(4g)]
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)],
            dim=1,
        )  # [N, T, C/8]
        masks = hyper_in @ upscaled  # [N, T, prod(4g)]
        if text_embedding is not None:
            text_down = self.txt_align_upscaled_embedding(text_embedding)[:, None]  # [N, 1, C/8]
            masks = masks + text_down @ upscaled  # similarity map, added to every mask token
        grid4 = tuple(4 * s for s in self.image_embedding_size)
        masks = masks.reshape(n, -1, *grid4)
        iou_pred = self.iou_prediction_head(hs[:, 0])
        selected = slice(1, None) if multimask_output else slice(0, 1)
        return masks[:, selected], iou_pred[:, selected]

    def output_tokens(self, n: int) -> Tensor:
        """The IoU and mask tokens, ``[n, 1 + T, C]``."""
        tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        return tokens[None].expand(n, -1, -1)
