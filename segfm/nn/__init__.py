"""Building blocks shared by segfm's networks (torch and einops only)."""

from segfm.nn.factories import as_tuple, check_spatial_dims, conv_transpose_type, conv_type
from segfm.nn.mlp import MLP, MLPBlock
from segfm.nn.norm import LayerNorm2d, LayerNorm3d, LayerNormNd
from segfm.nn.rel_pos import (
    RelPosStyle,
    decomposed_rel_pos_bias,
    rel_pos_attention,
    rel_pos_terms,
    relative_table,
)
from segfm.nn.windows import window_partition, window_unpartition

__all__ = [
    "MLP",
    "LayerNorm2d",
    "LayerNorm3d",
    "LayerNormNd",
    "MLPBlock",
    "RelPosStyle",
    "as_tuple",
    "check_spatial_dims",
    "conv_transpose_type",
    "conv_type",
    "decomposed_rel_pos_bias",
    "rel_pos_attention",
    "rel_pos_terms",
    "relative_table",
    "window_partition",
    "window_unpartition",
]
