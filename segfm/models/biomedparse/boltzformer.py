"""BoltzFormer: BiomedParse v2's text-conditioned mask decoder with Boltzmann attention sampling.

Zhao et al., "Boltzmann Attention Sampling for Image Analysis with Small Objects", CVPR 2025;
the layout is ``boltzformer_cls_decoder.py`` of microsoft/BiomedParse v2 with the v2 settings
(16 queries, width 512, 9 layers, 8 heads, pre-self-attention, existence classifier).

Each layer: the queries cross-attend to one level of the pixel decoder (coarsest first, cycling)
under a mask; then queries and the prompt's text tokens attend to each other together; then a
feed-forward block on the queries. The mask comes from the previous prediction: positions where
its sigmoid is below ``mask_threshold`` are hidden, and of those, about ``sample_ratio`` of the
tokens are drawn with probability proportional to ``exp(p / T)``, ``T = base_temp / (2 +
layer)``, and shown. With the released threshold 1.1 everything starts hidden, so the decoder
sees only the sampled tokens. The original samples at inference too (its inference is random);
here ``generator`` makes the draw reproducible.

An existence query cross-attends, each layer, to the detached queries and text tokens; a linear
layer then gives one ``object_existence`` logit per image and prompt.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segfm.models.biomedparse.pixel_decoder import sine_position
from segfm.models.biomedparse.text_encoder import TextEncoder
from segfm.nn import MLP


class SelfAttentionLayer(nn.Module):
    """Post-norm self-attention with positions added to queries and keys."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, pos: Tensor) -> Tensor:
        """Tokens ``[L, B, C]`` and their positions."""
        q = x + pos
        return self.norm(x + self.self_attn(q, q, value=x, need_weights=False)[0])


class CrossAttentionLayer(nn.Module):
    """Post-norm cross-attention; ``mask`` ``[B * heads, Q, K]`` is True where hidden."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.multihead_attn = nn.MultiheadAttention(dim, heads)
        self.norm = nn.LayerNorm(dim)

    def forward(
        self,
        x: Tensor,
        memory: Tensor,
        pos: Tensor,
        query_pos: Tensor | None = None,
        mask: Tensor | None = None,
    ) -> Tensor:
        """Queries ``[Q, B, C]`` attend to ``memory`` ``[K, B, C]``."""
        q = x if query_pos is None else x + query_pos
        out = self.multihead_attn(q, memory + pos, memory, attn_mask=mask, need_weights=False)[0]
        return self.norm(x + out)


class FFNLayer(nn.Module):
    """Post-norm feed-forward block."""

    def __init__(self, dim: int, ffn_dim: int) -> None:
        super().__init__()
        self.linear1 = nn.Linear(dim, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        """Apply to tokens ``[..., C]``."""
        return self.norm(x + self.linear2(F.relu(self.linear1(x))))


def boltzmann_mask(
    probs: Tensor,
    layer: int,
    threshold: float,
    sample_ratio: float,
    base_temp: float,
    generator: torch.Generator | None = None,
) -> Tensor:
    """The attention mask of a BoltzFormer layer (True = hidden).

    Args:
        probs: Sigmoid of the previous mask logits ``[..., K]``.
        layer: Index of the layer that produced them (-1 for the initial prediction).
        threshold: Positions with ``probs >= threshold`` are always shown.
        sample_ratio: Draws, as a fraction of ``K``.
        base_temp: Temperature at layer -1 (it falls as ``base_temp / (2 + layer)``).
        generator: Random generator on ``probs``'s device.

    Returns:
        Boolean mask ``[..., K]``: hidden unless above the threshold or drawn at least once in
        ``int(K * sample_ratio)`` draws with probability proportional to ``exp(probs / T)``.
    """
    hidden = probs < threshold
    temp = base_temp / (2 + layer)
    weights = torch.exp(probs / temp) * hidden
    weights = weights / weights.sum(-1, keepdim=True)
    draws = int(probs.shape[-1] * sample_ratio)
    still_hidden = (1 - weights) ** draws
    u = torch.rand(probs.shape, generator=generator, device=probs.device, dtype=probs.dtype)
    return hidden & (u < still_hidden)


class BoltzFormerTextDecoder(nn.Module):
    """Mask decoder conditioned on text tokens.

    Args:
        language_encoder: The text encoder (kept here: its weights live under this module in
            the released checkpoint).
        hidden_dim: Width of queries and features.
        num_queries: Mask queries.
        heads: Attention heads.
        ffn_dim: Hidden width of the feed-forward blocks.
        num_layers: Decoder layers.
        mask_dim: Channels of the pixel decoder's mask features.
        dim_proj: Width of ``class_embed`` (kept for the checkpoint; unused by v2's outputs).
        mask_threshold: See :func:`boltzmann_mask` (1.1 in v2: everything starts hidden).
        sample_ratio: See :func:`boltzmann_mask`.
        base_temp: See :func:`boltzmann_mask`.
        boltzmann: Sample the attention mask (else hide below the threshold only).
    """

    num_feature_levels = 3

    def __init__(
        self,
        language_encoder: TextEncoder,
        hidden_dim: int = 512,
        num_queries: int = 16,
        heads: int = 8,
        ffn_dim: int = 2048,
        num_layers: int = 9,
        mask_dim: int = 512,
        dim_proj: int = 512,
        mask_threshold: float = 1.1,
        sample_ratio: float = 0.1,
        base_temp: float = 1.0,
        boltzmann: bool = True,
    ) -> None:
        super().__init__()
        if num_queries < 1 or num_layers < 1 or hidden_dim % heads:
            msg = (
                f"need num_queries >= 1, num_layers >= 1 and hidden_dim ({hidden_dim}) divisible "
                f"by heads ({heads}); got {num_queries} and {num_layers}"
            )
            raise ValueError(msg)
        self.heads = heads
        self.num_queries = num_queries
        self.mask_threshold = mask_threshold
        self.sample_ratio = sample_ratio
        self.base_temp = base_temp
        self.boltzmann = boltzmann
        # registration order follows the official state dict
        self.class_embed = nn.Parameter(torch.zeros(hidden_dim, dim_proj))
        self.language_encoder = language_encoder
        self.transformer_self_attention_layers = nn.ModuleList(
            SelfAttentionLayer(hidden_dim, heads) for _ in range(num_layers)
        )
        self.transformer_cross_attention_layers = nn.ModuleList(
            CrossAttentionLayer(hidden_dim, heads) for _ in range(num_layers)
        )
        self.transformer_ffn_layers = nn.ModuleList(
            FFNLayer(hidden_dim, ffn_dim) for _ in range(num_layers)
        )
        self.classifier_cross_attention_layers = nn.ModuleList(
            CrossAttentionLayer(hidden_dim, heads) for _ in range(num_layers)
        )
        self.classifier_ffn_layers = nn.ModuleList(
            FFNLayer(hidden_dim, ffn_dim) for _ in range(num_layers)
        )
        self.classifier = nn.Linear(hidden_dim, 1)
        self.initial_self_attention_layer = SelfAttentionLayer(hidden_dim, heads)
        self.initial_ffn_layer = FFNLayer(hidden_dim, ffn_dim)
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        self.query_feat_ = nn.Embedding(num_queries, hidden_dim)
        self.query_embed_ = nn.Embedding(num_queries, hidden_dim)
        self.classifier_query = nn.Embedding(1, hidden_dim)
        self.level_embed = nn.Embedding(self.num_feature_levels, hidden_dim)
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)
        nn.init.trunc_normal_(self.class_embed, std=0.02)

    def _predict(
        self,
        output: Tensor,
        mask_features: Tensor,
        size: torch.Size,
        layer: int,
        generator: torch.Generator | None,
        prompts: int,
    ) -> tuple[Tensor, Tensor]:
        """Mask logits ``[N, Q, h, w]`` and the next layer's attention mask ``[N*heads, Q, K]``."""
        embed = self.mask_embed(self.decoder_norm(output).transpose(0, 1))  # [N, Q, C]
        n, q, c = embed.shape
        # one product per image for all its prompts' queries
        grouped = embed.reshape(n // prompts, prompts * q, c)
        masks = torch.einsum("bqc,bchw->bqhw", grouped, mask_features)
        masks = masks.reshape(n, q, *masks.shape[-2:])
        small = F.interpolate(masks.detach(), size=size, mode="bilinear", align_corners=False)
        probs = small.sigmoid().flatten(2).repeat_interleave(self.heads, dim=0)
        if self.boltzmann:
            hidden = boltzmann_mask(
                probs, layer, self.mask_threshold, self.sample_ratio, self.base_temp, generator
            )
        else:
            hidden = probs < self.mask_threshold
        return masks, hidden

    def _grouped(self, x: Tensor, prompts: int) -> Tensor:
        """Queries ``[Q, B * P, C]`` (image-major) as ``[P * Q, B, C]``: one row set per image."""
        q, n, c = x.shape
        return x.view(q, n // prompts, prompts, c).permute(2, 0, 1, 3).reshape(-1, n // prompts, c)

    def _cross_attend(
        self,
        layer: CrossAttentionLayer,
        output: Tensor,
        memory: Tensor,
        pos: Tensor,
        query_pos: Tensor,
        hidden: Tensor,
        prompts: int,
    ) -> Tensor:
        """The queries of every prompt of an image attend to its memory in one call.

        Keys and values are then projected once per image instead of once per prompt (the
        original copies the image's features for each prompt).
        """
        if prompts == 1:
            return layer(output, memory, pos, query_pos, hidden)
        q, n, c = output.shape
        b = n // prompts
        mask = hidden.view(b, prompts, self.heads, q, -1).transpose(1, 2)
        out = layer(
            self._grouped(output, prompts),
            memory,
            pos,
            self._grouped(query_pos, prompts),
            mask.reshape(b * self.heads, prompts * q, -1),
        )
        return out.view(prompts, q, b, c).permute(1, 2, 0, 3).reshape(q, n, c)

    def forward(
        self,
        features: list[Tensor],
        mask_features: Tensor,
        text: Tensor,
        generator: torch.Generator | None = None,
        prompts_per_image: int = 1,
    ) -> tuple[Tensor, Tensor]:
        """Decode masks for every prompt.

        Args:
            features: The pixel decoder's three levels ``[B, C, h_i, w_i]``, coarsest first.
            mask_features: ``[B, mask_dim, H/4, W/4]``.
            text: Grounding tokens of each prompt ``[T, N, C]``, ``N = B * prompts_per_image``,
                image-major.
            generator: Random generator of the Boltzmann sampling (on the features' device).
            prompts_per_image: Prompts of each image.

        Returns:
            Mask logits of every query ``[N, Q, H/4, W/4]`` and existence logits ``[N, 1]``.
        """
        p = prompts_per_image
        if p < 1 or text.shape[1] != mask_features.shape[0] * p:
            msg = (
                f"{text.shape[1]} prompts for {mask_features.shape[0]} images is not "
                f"prompts_per_image={p} each"
            )
            raise ValueError(msg)
        src, pos, sizes = [], [], []
        for i, x in enumerate(features):
            sizes.append(x.shape[-2:])
            half = self.level_embed.weight.shape[1] // 2
            pos.append(sine_position(x, half).flatten(2).permute(2, 0, 1))
            level = self.level_embed.weight[i][None, :, None]
            src.append((x.flatten(2) + level).permute(2, 0, 1))
        b = text.shape[1]
        query_pos = self.query_embed_.weight[:, None].repeat(1, b, 1)
        output = self.query_feat_.weight[:, None].repeat(1, b, 1)
        cls = self.classifier_query.weight[:, None].repeat(1, b, 1)
        text_pos = text.detach().clone()
        joint_pos = torch.cat([query_pos, text_pos])
        q = self.num_queries

        joint = self.initial_self_attention_layer(torch.cat([output, text]), joint_pos)
        output, text = self.initial_ffn_layer(joint[:q]), joint[q:]
        masks, hidden = self._predict(output, mask_features, sizes[0], -1, generator, p)
        for i in range(len(self.transformer_cross_attention_layers)):
            k = i % self.num_feature_levels
            # a query with every position hidden attends everywhere instead
            hidden = hidden & ~hidden.all(-1, keepdim=True)
            output = self._cross_attend(
                self.transformer_cross_attention_layers[i],
                output,
                src[k],
                pos[k],
                query_pos,
                hidden,
                p,
            )
            joint = self.transformer_self_attention_layers[i](torch.cat([output, text]), joint_pos)
            output, text = self.transformer_ffn_layers[i](joint[:q]), joint[q:]
            size = sizes[(i + 1) % self.num_feature_levels]
            masks, hidden = self._predict(output, mask_features, size, i, generator, p)
            cls = self.classifier_cross_attention_layers[i](cls, joint.detach(), joint_pos.detach())
            cls = self.classifier_ffn_layers[i](cls)
        return masks, self.classifier(cls[0])
