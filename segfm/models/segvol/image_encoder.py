"""SegVol's image encoder: MONAI's 3D ViT, returning the token grid as a feature volume."""

from __future__ import annotations

from collections.abc import Sequence

from monai.networks.nets import ViT
from torch import Tensor, nn

from segfm.nn import as_tuple


class SegVolViT(ViT):
    """MONAI's ``ViT`` as SegVol builds it, with its output reshaped to ``[B, C, *g]``.

    SegVol uses ``monai.networks.nets.ViT(in_channels=1, pos_embed="perceptron",
    classification=False, qkv_bias=False)``: a linear patch embedding of
    ``b c (h p1) (w p2) (d p3) -> b (h w d) (p1 p2 p3 c)``, a learned position embedding, plain
    transformer blocks and a final LayerNorm. The parameter names are MONAI's and the released
    checkpoint's (``patch_embedding.patch_embeddings.1.weight``, ``blocks.N.attn.qkv.weight``...).

    MONAI >= 1.3 gives every ``TransformerBlock`` a ``norm_cross_attn`` LayerNorm even without
    cross attention; it is never used then, and SegVol's checkpoint (MONAI 0.9) has no such keys,
    so it is removed here and the state dict keeps exactly the released keys. Attention runs
    through ``scaled_dot_product_attention`` (MONAI's ``use_flash_attention``).

    Args:
        img_size: Input size ``(D, H, W)``.
        patch_size: Patch size ``(D, H, W)``.
        hidden_size: Token width.
        mlp_dim: Hidden width of the block MLPs.
        num_layers: Transformer blocks.
        num_heads: Attention heads.
    """

    def __init__(
        self,
        img_size: Sequence[int],
        patch_size: Sequence[int],
        hidden_size: int = 768,
        mlp_dim: int = 3072,
        num_layers: int = 12,
        num_heads: int = 12,
    ) -> None:
        size = as_tuple(img_size, 3, "img_size")
        patch = as_tuple(patch_size, 3, "patch_size")
        if any(s <= 0 or p <= 0 or s % p for s, p in zip(size, patch, strict=True)):
            msg = f"img_size {size} must be a positive multiple of patch_size {patch}"
            raise ValueError(msg)
        super().__init__(
            in_channels=1,
            img_size=size,
            patch_size=patch,
            hidden_size=hidden_size,
            mlp_dim=mlp_dim,
            num_layers=num_layers,
            num_heads=num_heads,
            proj_type="perceptron",
            classification=False,
            dropout_rate=0.0,
            spatial_dims=3,
            qkv_bias=False,
        )
        for block in self.blocks:
            if hasattr(block, "norm_cross_attn"):
                block.norm_cross_attn = nn.Identity()
            # SDPA instead of MONAI's einsum-softmax-einsum: same result (2e-6 at full size),
            # half the time of a 32x256x256 forward on CPU (benchmarks/bench_segvol.py)
            block.attn.use_flash_attention = True
        self.img_size = size
        self.embedding_size = tuple(s // p for s, p in zip(size, patch, strict=True))

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        """Encode volumes.

        Args:
            x: ``[B, 1, D, H, W]`` of the encoder's input size.

        Returns:
            Embeddings ``[B, hidden_size, *g]`` with ``g = img_size / patch_size``.
        """
        if tuple(x.shape[2:]) != self.img_size:
            msg = f"the image encoder takes volumes of {self.img_size}, got {tuple(x.shape[2:])}"
            raise ValueError(msg)
        tokens, _ = super().forward(x)  # [B, prod(g), C]
        return tokens.transpose(1, 2).reshape(x.shape[0], -1, *self.embedding_size)
