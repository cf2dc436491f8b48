"""SAM's two-way transformer: prompt tokens and image tokens attend to each other.

Adapted from segment-anything's ``modeling/transformer.py``. It sees image embeddings only as
flattened token sequences, so one implementation serves 2D and 3D (SAM-Med3D's
``TwoWayTransformer3D`` has the same parameter names).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from segfm.nn import MLPBlock


class Attention(nn.Module):
    """Multi-head attention whose projections may shrink the width by ``downsample_rate``.

    Args:
        embedding_dim: Width of queries, keys, values and output.
        num_heads: Number of heads; must divide ``embedding_dim / downsample_rate``.
        downsample_rate: Internal width is ``embedding_dim / downsample_rate``.
    """

    def __init__(self, embedding_dim: int, num_heads: int, downsample_rate: int = 1) -> None:
        super().__init__()
        if downsample_rate <= 0 or embedding_dim % downsample_rate:
            msg = (
                f"downsample_rate must divide embedding_dim={embedding_dim}, got {downsample_rate}"
            )
            raise ValueError(msg)
        self.embedding_dim = embedding_dim
        self.internal_dim = embedding_dim // downsample_rate
        if num_heads <= 0 or self.internal_dim % num_heads:
            msg = f"num_heads must divide the internal width {self.internal_dim}, got {num_heads}"
            raise ValueError(msg)
        self.num_heads = num_heads
        self.q_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.k_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.v_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.out_proj = nn.Linear(self.internal_dim, embedding_dim)

    def _split_heads(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(
            1, 2
        )  # [B, h, N, c/h]

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Attend from ``q`` to ``k``/``v``.

        Args:
            q: Queries ``[B, Nq, C]``.
            k: Keys ``[B, Nk, C]``.
            v: Values ``[B, Nk, C]``.

        Returns:
            ``[B, Nq, C]``.
        """
        q, k, v = (
            self._split_heads(self.q_proj(q)),
            self._split_heads(self.k_proj(k)),
            self._split_heads(self.v_proj(v)),
        )
        out = F.scaled_dot_product_attention(q, k, v)  # [B, h, Nq, c/h]
        b, _, n, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, self.internal_dim))


class TwoWayAttentionBlock(nn.Module):
    """Self-attention of the tokens, token-to-image, MLP, then image-to-token attention.

    Args:
        embedding_dim: Token width.
        num_heads: Attention heads.
        mlp_dim: Hidden width of the token MLP.
        activation: Activation class of the MLP.
        attention_downsample_rate: Width reduction inside the cross attentions.
        skip_first_layer_pe: Do not add the positional encoding to the first self-attention
            (the first block, whose queries are the prompt embeddings themselves).
    """

    def __init__(
        self,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int = 2048,
        activation: type[nn.Module] = nn.ReLU,
        attention_downsample_rate: int = 2,
        skip_first_layer_pe: bool = False,
    ) -> None:
        super().__init__()
        self.self_attn = Attention(embedding_dim, num_heads)
        self.norm1 = nn.LayerNorm(embedding_dim)
        self.cross_attn_token_to_image = Attention(
            embedding_dim, num_heads, attention_downsample_rate
        )
        self.norm2 = nn.LayerNorm(embedding_dim)
        self.mlp = MLPBlock(embedding_dim, mlp_dim, activation)
        self.norm3 = nn.LayerNorm(embedding_dim)
        self.norm4 = nn.LayerNorm(embedding_dim)
        self.cross_attn_image_to_token = Attention(
            embedding_dim, num_heads, attention_downsample_rate
        )
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(
        self, queries: Tensor, keys: Tensor, query_pe: Tensor, key_pe: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Update tokens and image tokens.

        Args:
            queries: Prompt tokens ``[B, Nq, C]``.
            keys: Image tokens ``[B, Nk, C]``.
            query_pe: Added to the queries before attention ``[B, Nq, C]``.
            key_pe: Added to the keys before attention ``[B or 1, Nk, C]``.

        Returns:
            Updated queries ``[B, Nq, C]`` and keys ``[B, Nk, C]``.
        """
        if self.skip_first_layer_pe:
            queries = self.self_attn(q=queries, k=queries, v=queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q=q, k=q, v=queries)
        queries = self.norm1(queries)

        q, k = queries + query_pe, keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(q=q, k=k, v=keys))
        queries = self.norm3(queries + self.mlp(queries))

        q, k = queries + query_pe, keys + key_pe
        keys = self.norm4(keys + self.cross_attn_image_to_token(q=k, k=q, v=queries))
        return queries, keys


class TwoWayTransformer(nn.Module):
    """Stack of two-way blocks and a final token-to-image attention.

    Args:
        depth: Number of blocks.
        embedding_dim: Token width.
        num_heads: Attention heads.
        mlp_dim: Hidden width of the token MLPs.
        activation: Activation class of the MLPs.
        attention_downsample_rate: Width reduction inside the cross attentions.
    """

    def __init__(
        self,
        depth: int,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int,
        activation: type[nn.Module] = nn.ReLU,
        attention_downsample_rate: int = 2,
    ) -> None:
        super().__init__()
        if depth < 1:
            msg = f"depth must be >= 1, got {depth}"
            raise ValueError(msg)
        self.depth = depth
        self.embedding_dim = embedding_dim
        self.num_heads = num_heads
        self.mlp_dim = mlp_dim
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(
                embedding_dim=embedding_dim,
                num_heads=num_heads,
                mlp_dim=mlp_dim,
                activation=activation,
                attention_downsample_rate=attention_downsample_rate,
                skip_first_layer_pe=i == 0,
            )
            for i in range(depth)
        )
        self.final_attn_token_to_image = Attention(
            embedding_dim, num_heads, attention_downsample_rate
        )
        self.norm_final_attn = nn.LayerNorm(embedding_dim)

    def forward(
        self, image_embedding: Tensor, image_pe: Tensor, point_embedding: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Run the transformer.

        Args:
            image_embedding: Image embeddings ``[B, C, *g]``.
            image_pe: Their positional encoding ``[B or 1, C, *g]``.
            point_embedding: Prompt tokens ``[B, Nq, C]``.

        Returns:
            Processed tokens ``[B, Nq, C]`` and image tokens ``[B, prod(g), C]``.
        """
        keys = image_embedding.flatten(2).transpose(1, 2)  # [B, prod(g), C]
        key_pe = image_pe.flatten(2).transpose(1, 2)
        queries = point_embedding
        for layer in self.layers:
            queries, keys = layer(
                queries=queries, keys=keys, query_pe=point_embedding, key_pe=key_pe
            )
        q, k = queries + point_embedding, keys + key_pe
        queries = self.norm_final_attn(queries + self.final_attn_token_to_image(q=q, k=k, v=keys))
        return queries, keys
