"""SAM's mask decoder: a transformer over prompt and image tokens, then hypernetwork masks.

Adapted from segment-anything's ``modeling/mask_decoder.py``; with ``spatial_dims=3`` it is
SAM-Med3D's ``MaskDecoder3D`` (same parameter names). Unlike upstream, the image embeddings
come with one row per prompt set (the caller indexes or broadcasts them), so a batch of several
images with one prompt each works; upstream's ``repeat_interleave`` breaks on it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from segfm.nn import MLP, LayerNormNd, check_spatial_dims, conv_transpose_type


class MaskDecoder(nn.Module):
    """Predict masks and their IoU from image and prompt embeddings.

    Args:
        spatial_dims: 2 or 3.
        transformer_dim: Width of the prompt and image tokens.
        transformer: Two-way transformer of that width (e.g. :class:`TwoWayTransformer`).
        num_multimask_outputs: Masks predicted for ambiguous prompts; one more token predicts
            the single-mask output.
        iou_head_depth: Layers of the IoU prediction MLP.
        iou_head_hidden_dim: Hidden width of the IoU prediction MLP.
    """

    def __init__(
        self,
        spatial_dims: int,
        transformer_dim: int,
        transformer: nn.Module,
        num_multimask_outputs: int = 3,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
    ) -> None:
        super().__init__()
        check_spatial_dims(spatial_dims)
        if transformer_dim <= 0 or transformer_dim % 8:
            msg = f"transformer_dim must be a positive multiple of 8, got {transformer_dim}"
            raise ValueError(msg)
        if num_multimask_outputs < 1:
            msg = f"num_multimask_outputs must be >= 1, got {num_multimask_outputs}"
            raise ValueError(msg)
        self.spatial_dims = spatial_dims
        self.transformer_dim = transformer_dim
        self.transformer = transformer
        self.num_multimask_outputs = num_multimask_outputs
        self.num_mask_tokens = num_multimask_outputs + 1
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)
        conv_t = conv_transpose_type(spatial_dims)
        self.output_upscaling = nn.Sequential(
            conv_t(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            LayerNormNd(transformer_dim // 4),
            nn.GELU(),
            conv_t(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3)
            for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(
            transformer_dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth
        )

    def forward(
        self,
        image_embeddings: Tensor,
        image_pe: Tensor,
        sparse_prompt_embeddings: Tensor,
        dense_prompt_embeddings: Tensor,
        multimask_output: bool = False,
    ) -> tuple[Tensor, Tensor]:
        """Predict masks.

        Args:
            image_embeddings: One image embedding per prompt set ``[N, C, *g]``.
            image_pe: Positional encoding of the grid ``[1, C, *g]``.
            sparse_prompt_embeddings: Point and box tokens ``[N, P, C]``.
            dense_prompt_embeddings: Mask prompt embeddings ``[N, C, *g]``.
            multimask_output: Return the ``num_multimask_outputs`` ambiguity masks instead of
                the single mask.

        Returns:
            Low-res mask logits ``[N, M, *4g]`` and IoU predictions ``[N, M]``, ``M`` = 1 or
            ``num_multimask_outputs``.
        """
        n = sparse_prompt_embeddings.shape[0]
        if image_embeddings.shape[0] != n or dense_prompt_embeddings.shape[0] != n:
            msg = (
                "image_embeddings, sparse and dense prompt embeddings need one row per prompt set, "
                "got "
                f"{image_embeddings.shape[0]}, {n} and {dense_prompt_embeddings.shape[0]}"
            )
            raise ValueError(msg)
        masks, iou_pred = self.predict_masks(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings
        )
        selected = slice(1, None) if multimask_output else slice(0, 1)
        return masks[:, selected], iou_pred[:, selected]

    def predict_masks(
        self,
        image_embeddings: Tensor,
        image_pe: Tensor,
        sparse_prompt_embeddings: Tensor,
        dense_prompt_embeddings: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """All mask tokens' masks and IoU predictions (see :meth:`forward` for the arguments).

        Args:
            image_embeddings: ``[N, C, *g]``.
            image_pe: ``[1, C, *g]``.
            sparse_prompt_embeddings: ``[N, P, C]``.
            dense_prompt_embeddings: ``[N, C, *g]``.

        Returns:
            Mask logits ``[N, num_mask_tokens, *4g]`` and IoU ``[N, num_mask_tokens]``.
        """
        n = sparse_prompt_embeddings.shape[0]
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        output_tokens = output_tokens.unsqueeze(0).expand(n, -1, -1)
        tokens = torch.cat([output_tokens, sparse_prompt_embeddings], dim=1)  # [N, 1 + T + P, C]

        src = image_embeddings + dense_prompt_embeddings  # [N, C, *g]
        hs, src = self.transformer(src, image_pe, tokens)  # [N, 1 + T + P, C], [N, prod(g), C]
        iou_token_out = hs[:, 0]
        mask_tokens_out = hs[:, 1 : 1 + self.num_mask_tokens]

        grid = image_embeddings.shape[2:]
        src = src.transpose(1, 2).reshape(n, self.transformer_dim, *grid)
        upscaled = self.output_upscaling(src)  # [N, C/8, *4g]
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)],
            dim=1,
        )  # [N, T, C/8]
        masks = (hyper_in @ upscaled.flatten(2)).reshape(n, -1, *upscaled.shape[2:])
        return masks, self.iou_prediction_head(iou_token_out)
