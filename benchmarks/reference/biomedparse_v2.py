"""Reference of BiomedParse v2's official forward, for agreement checks and timing.

A re-implementation (not a copy) in the original's structure, module names and parameter names,
so segfm's ``BiomedParse`` state dict (the 1050 official names) loads into it strictly. Sources:

- microsoft/BiomedParse branch v2 @ f571d5cc: ``src/model/biomedparse_2D.py`` (2D inference:
  ``forward_eval``), ``src/model/biomedparse_3D.py`` (``MaskFormerHead``, ``BiomedParseModel``,
  ``tile_feature``), ``src/model/backbone/focal.py`` (``D2FocalNet``), ``src/model/d2_compat.py``
  (``Conv2d``, ``get_norm``), ``src/model/pixel_decoder/transformer_encoder_fpn.py``,
  ``src/model/transformer_decoder/modules.py``; configuration ``configs/model/biomedparse_3D.yaml``
  and its defaults (d2focal, transformer_encoder_fpn, boltzformer_decoder,
  seem_language_encoder);
- files that commit does not change, read in the fork Lsyyh/BiomedParse_v2 @ 6168155:
  ``transformer_decoder/boltzformer_cls_decoder.py``, ``position_encoding.py``,
  ``transformer.py``, ``language_encoders/{seem_language_encoder,language_transformer}.py``, and
  ``src/model/biomedparse.py`` (the training forward used by ``finetune_biomedparse.yaml``).

Kept as the original runs it: ``nn.MultiheadAttention`` with its default ``need_weights=True``
in the pixel decoder and the mask decoder (averaged attention maps computed, then dropped);
the TF-style LayerNorm of the text encoder (cast to float32, mean, variance, square root); the
features tiled per prompt with ``expand(...).reshape`` (or ``repeat_interleave`` for unequal
counts); the prompt tokens gathered with ``pad_sequence`` (padding -1, then zeroed); the unused
``class_embed`` projection, the NaN asserts and the three ``.item()`` mask ratios of every
prediction head; dropout modules (p = 0) and FocalNet's stochastic depth (``drop_path_rate``
0.3 in the config, active in ``train()`` mode). The Boltzmann sampling draws from the global
generator with ``torch.rand_like`` in eval mode too, as the original does: seed the global
generator identically (and give segfm no generator) to get the same draws.

Deliberate differences:

- text comes tokenised (``inputs["tokens"]``, what the CLIP tokenizer returns for the prompts,
  and ``inputs["num_prompts"]``, what ``process_multi_prompts`` counts from "[SEP]"-joined
  strings), so no tokenizer is needed;
- the original recomputes, at every ``encode_prompts`` (eval: 17 class names x 81 templates,
  under ``no_grad``) and every training forward (17 names, one random template each), class
  embeddings that no output uses. Here that runs only when ``inputs["class_tokens"]`` is given
  (one tokenised template batch per class), so it can be timed apart;
- ``convolute_outputs`` (False in v2) and the 3D volume loop of ``biomedparse_3D.forward_eval``
  (which runs the same steps per slice batch, with prompts encoded once per volume) are left
  out; the pixel decoder is built for the backbone's shapes directly instead of re-running its
  ``__init__`` through ``override_input_shape``; weight initialisation is not reproduced
  (weights are always loaded).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: ``MaskFormerHead.classes``: names whose embeddings the original recomputes at every call
CLASSES = (
    "liver",
    "lung",
    "kidney",
    "pancreas",
    "heart anatomies",
    "brain anatomies",
    "eye anatomies",
    "vessel",
    "other organ",
    "tumor",
    "infection",
    "other lesion",
    "fluid disturbance",
    "other abnormality",
    "histology structure",
    "other",
    "background",
)
#: ``len(get_prompt_templates())``: prompts per class name at evaluation
NUM_TEMPLATES = 81

Tokens = dict[str, Tensor]


# ------------------------------------------------------------ timm / detectron2 stand-ins
class DropPath(nn.Module):
    """timm's stochastic depth: zero whole samples with probability ``drop_prob`` in training."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: Tensor) -> Tensor:
        """Drop samples of ``x`` (identity in eval mode), rescaling the kept ones."""
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1 - self.drop_prob
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        random_tensor = x.new_empty(shape).bernoulli_(keep)
        if keep > 0.0:
            random_tensor.div_(keep)
        return x * random_tensor


class Conv2d(nn.Conv2d):
    """``d2_compat.Conv2d``: a convolution with an optional norm and activation."""

    def __init__(
        self,
        *args: Any,
        norm: nn.Module | None = None,
        activation: Callable[[Tensor], Tensor] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.norm = norm
        self.activation = activation

    def forward(self, inputs: Tensor) -> Tensor:
        """Convolve, normalise, activate."""
        outputs = F.conv2d(
            inputs, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups
        )
        if self.norm is not None:
            outputs = self.norm(outputs)
        if self.activation is not None:
            outputs = self.activation(outputs)
        return outputs


def get_norm(norm: str | Callable[[int], nn.Module] | None, out_channels: int) -> nn.Module | None:
    """``d2_compat.get_norm``: "GN" is GroupNorm(32); a callable is called with the channels."""
    if norm is None or norm == "":
        return None
    if not isinstance(norm, str):
        return norm(out_channels)
    factories: dict[str, Callable[[int], nn.Module]] = {
        "BN": nn.BatchNorm2d,
        "GN": lambda channels: nn.GroupNorm(32, channels),
    }
    if norm not in factories:
        msg = f"Unsupported normalization: {norm}"
        raise ValueError(msg)
    return factories[norm](out_channels)


# ------------------------------------------------------------------------- FocalNet
class Mlp(nn.Module):
    """``fc1``, activation, dropout, ``fc2``, dropout."""

    def __init__(
        self,
        in_features: int,
        hidden_features: int | None = None,
        out_features: int | None = None,
        act_layer: type[nn.Module] = nn.GELU,
        drop: float = 0.0,
    ) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features or in_features)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_features or in_features, out_features or in_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block to tokens ``[..., C]``."""
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class FocalModulation(nn.Module):
    """Focal modulation (hierarchical depth-wise context, gated, times a query)."""

    def __init__(
        self,
        dim: int,
        proj_drop: float = 0.0,
        focal_level: int = 2,
        focal_window: int = 7,
        focal_factor: int = 2,
        use_postln_in_modulation: bool = False,
        scaling_modulator: bool = False,
    ) -> None:
        super().__init__()
        self.focal_level = focal_level
        self.use_postln_in_modulation = use_postln_in_modulation
        self.scaling_modulator = scaling_modulator
        self.f = nn.Linear(dim, 2 * dim + (focal_level + 1), bias=True)
        self.h = nn.Conv2d(dim, dim, kernel_size=1, stride=1, padding=0, groups=1, bias=True)
        self.act = nn.GELU()
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.focal_layers = nn.ModuleList()
        if use_postln_in_modulation:
            self.ln = nn.LayerNorm(dim)
        for k in range(focal_level):
            kernel_size = focal_factor * k + focal_window
            conv = nn.Conv2d(
                dim, dim, kernel_size, stride=1, groups=dim, padding=kernel_size // 2, bias=False
            )
            self.focal_layers.append(nn.Sequential(conv, nn.GELU()))

    def forward(self, x: Tensor) -> Tensor:
        """Modulate tokens ``[B, H, W, C]``."""
        c = x.shape[-1]
        x = self.f(x).permute(0, 3, 1, 2).contiguous()
        q, ctx, gates = torch.split(x, (c, c, self.focal_level + 1), 1)
        ctx_all: Tensor | float = 0
        for level in range(self.focal_level):
            ctx = self.focal_layers[level](ctx)
            ctx_all = ctx_all + ctx * gates[:, level : level + 1]
        ctx_global = self.act(ctx.mean(2, keepdim=True).mean(3, keepdim=True))
        ctx_all = ctx_all + ctx_global * gates[:, self.focal_level :]
        if self.scaling_modulator:
            ctx_all = ctx_all / (self.focal_level + 1)
        x_out = (q * self.h(ctx_all)).permute(0, 2, 3, 1).contiguous()
        if self.use_postln_in_modulation:
            x_out = self.ln(x_out)
        return self.proj_drop(self.proj(x_out))


class FocalModulationBlock(nn.Module):
    """Modulation and MLP, each residual with layer scale and stochastic depth."""

    def __init__(
        self,
        dim: int,
        mlp_ratio: float = 4.0,
        drop: float = 0.0,
        drop_path: float = 0.0,
        focal_level: int = 2,
        focal_window: int = 9,
        use_postln: bool = False,
        use_postln_in_modulation: bool = False,
        scaling_modulator: bool = False,
        use_layerscale: bool = False,
        layerscale_value: float = 1e-4,
    ) -> None:
        super().__init__()
        self.use_postln = use_postln
        self.norm1 = nn.LayerNorm(dim)
        self.modulation = FocalModulation(
            dim,
            proj_drop=drop,
            focal_level=focal_level,
            focal_window=focal_window,
            use_postln_in_modulation=use_postln_in_modulation,
            scaling_modulator=scaling_modulator,
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)
        self.H: int | None = None  # set by BasicLayer before each call
        self.W: int | None = None
        self.gamma_1: Tensor | float = 1.0
        self.gamma_2: Tensor | float = 1.0
        if use_layerscale:
            self.gamma_1 = nn.Parameter(layerscale_value * torch.ones(dim))
            self.gamma_2 = nn.Parameter(layerscale_value * torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        """Tokens ``[B, H*W, C]`` of the grid ``(self.H, self.W)``."""
        b, length, c = x.shape
        h, w = self.H, self.W
        assert h is not None and w is not None and length == h * w, "input feature has wrong size"
        shortcut = x
        if not self.use_postln:
            x = self.norm1(x)
        x = self.modulation(x.view(b, h, w, c)).view(b, h * w, c)
        if self.use_postln:
            x = self.norm1(x)
        x = shortcut + self.drop_path(self.gamma_1 * x)
        if self.use_postln:
            return x + self.drop_path(self.gamma_2 * self.norm2(self.mlp(x)))
        return x + self.drop_path(self.gamma_2 * self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    """Overlapping convolutional patch embedding (stem 7x7/4, transitions 3x3/2), LayerNorm."""

    def __init__(
        self,
        patch_size: int = 4,
        in_chans: int = 3,
        embed_dim: int = 96,
        norm_layer: type[nn.Module] | None = None,
        use_conv_embed: bool = False,
        is_stem: bool = False,
    ) -> None:
        super().__init__()
        self.patch_size = (patch_size, patch_size)
        self.embed_dim = embed_dim
        if use_conv_embed:
            kernel_size, padding, stride = (7, 2, 4) if is_stem else (3, 1, 2)
            self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size, stride=stride, padding=padding)
        else:
            self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = norm_layer(embed_dim) if norm_layer is not None else None

    def forward(self, x: Tensor) -> Tensor:
        """Embed ``[B, C, H, W]`` (right/bottom padded to a multiple of the patch size)."""
        _, _, h, w = x.size()
        if w % self.patch_size[1] != 0:
            x = F.pad(x, (0, self.patch_size[1] - w % self.patch_size[1]))
        if h % self.patch_size[0] != 0:
            x = F.pad(x, (0, 0, 0, self.patch_size[0] - h % self.patch_size[0]))
        x = self.proj(x)
        if self.norm is not None:
            wh, ww = x.size(2), x.size(3)
            x = self.norm(x.flatten(2).transpose(1, 2))
            x = x.transpose(1, 2).view(-1, self.embed_dim, wh, ww)
        return x


class BasicLayer(nn.Module):
    """One stage: blocks, then a downsampling patch embedding (all but the last stage)."""

    def __init__(
        self,
        dim: int,
        depth: int,
        mlp_ratio: float,
        drop: float,
        drop_path: Sequence[float],
        downsample: bool,
        block_kwargs: dict[str, Any],
        use_conv_embed: bool,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            FocalModulationBlock(
                dim, mlp_ratio=mlp_ratio, drop=drop, drop_path=drop_path[i], **block_kwargs
            )
            for i in range(depth)
        )
        self.downsample = None
        if downsample:
            self.downsample = PatchEmbed(
                patch_size=2,
                in_chans=dim,
                embed_dim=2 * dim,
                use_conv_embed=use_conv_embed,
                norm_layer=nn.LayerNorm,
                is_stem=False,
            )

    def forward(self, x: Tensor, h: int, w: int) -> tuple[Tensor, int, int, Tensor, int, int]:
        """Tokens ``[B, H*W, C]`` to (output, H, W, next input, next H, next W)."""
        for blk in self.blocks:
            blk.H, blk.W = h, w
            x = blk(x)
        if self.downsample is None:
            return x, h, w, x, h, w
        x_down = self.downsample(x.transpose(1, 2).view(x.shape[0], x.shape[-1], h, w))
        return x, h, w, x_down.flatten(2).transpose(1, 2), (h + 1) // 2, (w + 1) // 2


class D2FocalNet(nn.Module):
    """FocalNet (``FocalNet`` + ``D2FocalNet`` of the original) returning ``res2`` .. ``res5``."""

    def __init__(
        self,
        patch_size: int = 4,
        in_chans: int = 3,
        embed_dim: int = 96,
        depths: Sequence[int] = (2, 2, 6, 2),
        mlp_ratio: float = 4.0,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.2,
        focal_levels: Sequence[int] = (2, 2, 2, 2),
        focal_windows: Sequence[int] = (9, 9, 9, 9),
        use_conv_embed: bool = False,
        use_postln: bool = False,
        use_postln_in_modulation: bool = False,
        scaling_modulator: bool = False,
        use_layerscale: bool = False,
        out_features: Sequence[str] = ("res2", "res3", "res4", "res5"),
    ) -> None:
        super().__init__()
        self.num_layers = len(depths)
        self.out_indices = list(range(self.num_layers))
        self.patch_embed = PatchEmbed(
            patch_size, in_chans, embed_dim, nn.LayerNorm, use_conv_embed, is_stem=True
        )
        self.pos_drop = nn.Dropout(p=drop_rate)
        dpr = [x.item() for x in torch.linspace(0, drop_path_rate, sum(depths), device="cpu")]
        self.layers = nn.ModuleList()
        for i in range(self.num_layers):
            block_kwargs = {
                "focal_level": focal_levels[i],
                "focal_window": focal_windows[i],
                "use_postln": use_postln,
                "use_postln_in_modulation": use_postln_in_modulation,
                "scaling_modulator": scaling_modulator,
                "use_layerscale": use_layerscale,
            }
            self.layers.append(
                BasicLayer(
                    int(embed_dim * 2**i),
                    depths[i],
                    mlp_ratio,
                    drop_rate,
                    dpr[sum(depths[:i]) : sum(depths[: i + 1])],
                    i < self.num_layers - 1,
                    block_kwargs,
                    use_conv_embed,
                )
            )
        self.num_features = [int(embed_dim * 2**i) for i in range(self.num_layers)]
        for i in self.out_indices:
            self.add_module(f"norm{i}", nn.LayerNorm(self.num_features[i]))
        self._out_features = list(out_features)
        self._out_feature_strides = {"res2": 4, "res3": 8, "res4": 16, "res5": 32}
        self._out_feature_channels = {f"res{i + 2}": c for i, c in enumerate(self.num_features)}

    def output_shape(self) -> dict[str, dict[str, int]]:
        """Channels and stride of each output (the pixel decoder's ``input_shape``)."""
        return {
            name: {
                "channel": self._out_feature_channels[name],
                "stride": self._out_feature_strides[name],
            }
            for name in self._out_features
        }

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Normalised images ``[B, 3, H, W]`` to ``res2`` .. ``res5`` ``[B, C_i, H_i, W_i]``."""
        assert x.dim() == 4, f"SwinTransformer takes an input of shape (N, C, H, W). Got {x.shape}"
        x = self.patch_embed(x)
        wh, ww = x.size(2), x.size(3)
        x = self.pos_drop(x.flatten(2).transpose(1, 2))
        outs = {}
        for i in range(self.num_layers):
            x_out, h, w, x, wh, ww = self.layers[i](x, wh, ww)
            if i in self.out_indices:
                x_out = getattr(self, f"norm{i}")(x_out)
                out = x_out.view(-1, h, w, self.num_features[i]).permute(0, 3, 1, 2).contiguous()
                outs[f"res{i + 2}"] = out
        return {k: v for k, v in outs.items() if k in self._out_features}


# -------------------------------------------------------------------- pixel decoder
class PositionEmbeddingSine(nn.Module):
    """DETR's normalised sine position embedding (from a cumulative sum of a "not masked" map)."""

    def __init__(
        self, num_pos_feats: int = 64, temperature: float = 10000, normalize: bool = False
    ) -> None:
        super().__init__()
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = 2 * math.pi

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Positions ``[B, 2 * num_pos_feats, H, W]`` of a map ``[B, C, H, W]``."""
        if mask is None:
            mask = torch.zeros((x.size(0), x.size(2), x.size(3)), device=x.device, dtype=torch.bool)
        not_mask = ~mask
        y_embed = not_mask.cumsum(1, dtype=torch.float32)
        x_embed = not_mask.cumsum(2, dtype=torch.float32)
        if self.normalize:
            eps = 1e-6
            y_embed = y_embed / (y_embed[:, -1:, :] + eps) * self.scale
            x_embed = x_embed / (x_embed[:, :, -1:] + eps) * self.scale
        dim_t = torch.arange(self.num_pos_feats, dtype=torch.float32, device=x.device)
        dim_t = self.temperature ** (
            2 * torch.div(dim_t, 2, rounding_mode="floor") / self.num_pos_feats
        )
        pos_x = x_embed[:, :, :, None] / dim_t
        pos_y = y_embed[:, :, :, None] / dim_t
        pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).flatten(3)
        pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).flatten(3)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)


def _get_activation_fn(activation: str) -> Callable[[Tensor], Tensor]:
    """``relu``, ``gelu`` or ``glu``."""
    functions = {"relu": F.relu, "gelu": F.gelu, "glu": F.glu}
    if activation not in functions:
        msg = f"activation should be relu/gelu, not {activation}."
        raise RuntimeError(msg)
    return functions[activation]


class TransformerEncoderLayer(nn.Module):
    """DETR encoder layer (post-norm unless ``normalize_before``)."""

    def __init__(
        self,
        d_model: int,
        nhead: int,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        activation: str = "relu",
        normalize_before: bool = False,
    ) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.activation = _get_activation_fn(activation)
        self.normalize_before = normalize_before

    def forward(self, src: Tensor, pos: Tensor | None = None) -> Tensor:
        """Tokens ``[L, B, C]`` with positions added to queries and keys."""
        if self.normalize_before:
            src2 = self.norm1(src)
            q = k = src2 if pos is None else src2 + pos
            src = src + self.dropout1(self.self_attn(q, k, value=src2)[0])
            src2 = self.linear2(self.dropout(self.activation(self.linear1(self.norm2(src)))))
            return src + self.dropout2(src2)
        q = k = src if pos is None else src + pos
        src = self.norm1(src + self.dropout1(self.self_attn(q, k, value=src)[0]))
        src2 = self.linear2(self.dropout(self.activation(self.linear1(src))))
        return self.norm2(src + self.dropout2(src2))


class TransformerEncoder(nn.Module):
    """``num_layers`` deep copies of a layer, then an optional norm."""

    def __init__(
        self, encoder_layer: nn.Module, num_layers: int, norm: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(copy.deepcopy(encoder_layer) for _ in range(num_layers))
        self.norm = norm

    def forward(self, src: Tensor, pos: Tensor | None = None) -> Tensor:
        """Encode tokens ``[L, B, C]``."""
        output = src
        for layer in self.layers:
            output = layer(output, pos=pos)
        return output if self.norm is None else self.norm(output)


class TransformerEncoderOnly(nn.Module):
    """The encoder applied to a map ``[B, C, H, W]``."""

    def __init__(
        self,
        d_model: int = 512,
        nhead: int = 8,
        num_encoder_layers: int = 6,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        activation: str = "relu",
        normalize_before: bool = False,
    ) -> None:
        super().__init__()
        layer = TransformerEncoderLayer(
            d_model, nhead, dim_feedforward, dropout, activation, normalize_before
        )
        norm = nn.LayerNorm(d_model) if normalize_before else None
        self.encoder = TransformerEncoder(layer, num_encoder_layers, norm)

    def forward(self, src: Tensor, mask: Tensor | None, pos_embed: Tensor) -> Tensor:
        """Encode ``src`` (``mask`` is always None in v2) with positions of the same shape."""
        bs, c, h, w = src.shape
        src = src.flatten(2).permute(2, 0, 1)
        pos_embed = pos_embed.flatten(2).permute(2, 0, 1)
        memory = self.encoder(src, pos=pos_embed)
        return memory.permute(1, 2, 0).view(bs, c, h, w)


class TransformerEncoderPixelDecoder(nn.Module):
    """FPN whose coarsest level passes a transformer encoder (``BasePixelDecoder`` folded in).

    Args:
        input_shape: ``{"res2": {"channel": C, "stride": 4}, ...}`` of the backbone.
        transformer_dropout: Dropout of the encoder.
        transformer_nheads: Heads of the encoder.
        transformer_dim_feedforward: Hidden width of the encoder's feed-forward blocks.
        transformer_enc_layers: Encoder layers.
        conv_dim: Width of the FPN.
        mask_dim: Channels of the mask features.
        norm: "GN" (GroupNorm(32)) or a callable of the channels.
        transformer_pre_norm: Pre-norm encoder layers.
    """

    def __init__(
        self,
        input_shape: dict[str, dict[str, int]],
        transformer_dropout: float = 0.1,
        transformer_nheads: int = 8,
        transformer_dim_feedforward: int = 2048,
        transformer_enc_layers: int = 6,
        conv_dim: int = 256,
        mask_dim: int = 256,
        norm: str | Callable[[int], nn.Module] | None = None,
        transformer_pre_norm: bool = False,
    ) -> None:
        super().__init__()
        shapes = sorted(input_shape.items(), key=lambda kv: kv[1]["stride"])
        self.in_features = [k for k, _ in shapes]
        channels = [v["channel"] for _, v in shapes]
        use_bias = norm == ""
        lateral_convs: list[Conv2d | None] = []
        output_convs: list[Conv2d] = []
        # BasePixelDecoder.__init__: adapter_i / layer_i, then mask_features
        for idx, in_channels in enumerate(channels):
            if idx == len(channels) - 1:
                output_conv = Conv2d(
                    in_channels,
                    conv_dim,
                    kernel_size=3,
                    padding=1,
                    bias=use_bias,
                    norm=get_norm(norm, conv_dim),
                    activation=F.relu,
                )
                self.add_module(f"layer_{idx + 1}", output_conv)
                lateral_convs.append(None)
                output_convs.append(output_conv)
                continue
            lateral_conv = Conv2d(
                in_channels, conv_dim, kernel_size=1, bias=use_bias, norm=get_norm(norm, conv_dim)
            )
            output_conv = Conv2d(
                conv_dim,
                conv_dim,
                kernel_size=3,
                padding=1,
                bias=use_bias,
                norm=get_norm(norm, conv_dim),
                activation=F.relu,
            )
            self.add_module(f"adapter_{idx + 1}", lateral_conv)
            self.add_module(f"layer_{idx + 1}", output_conv)
            lateral_convs.append(lateral_conv)
            output_convs.append(output_conv)
        self.lateral_convs = lateral_convs[::-1]  # plain lists: top-down order
        self.output_convs = output_convs[::-1]
        self.mask_features = Conv2d(conv_dim, mask_dim, kernel_size=3, padding=1)
        self.maskformer_num_feature_levels = 3
        # TransformerEncoderPixelDecoder.__init__: projection, encoder, a new last layer
        self.input_proj = Conv2d(channels[-1], conv_dim, kernel_size=1)
        self.transformer = TransformerEncoderOnly(
            d_model=conv_dim,
            dropout=transformer_dropout,
            nhead=transformer_nheads,
            dim_feedforward=transformer_dim_feedforward,
            num_encoder_layers=transformer_enc_layers,
            normalize_before=transformer_pre_norm,
        )
        self.pe_layer = PositionEmbeddingSine(conv_dim // 2, normalize=True)
        output_conv = Conv2d(
            conv_dim,
            conv_dim,
            kernel_size=3,
            padding=1,
            bias=use_bias,
            norm=get_norm(norm, conv_dim),
            activation=F.relu,
        )
        delattr(self, f"layer_{len(self.in_features)}")
        self.add_module(f"layer_{len(self.in_features)}", output_conv)
        self.output_convs[0] = output_conv

    def forward_features(self, features: dict[str, Tensor]) -> tuple[Tensor, Tensor, list[Tensor]]:
        """Mask features, the encoder's output and the three coarsest FPN levels."""
        multi_scale_features = []
        num_cur_levels = 0
        transformer_encoder_features = None
        y = None
        for idx, f in enumerate(self.in_features[::-1]):
            x = features[f]
            lateral_conv = self.lateral_convs[idx]
            output_conv = self.output_convs[idx]
            if lateral_conv is None:
                transformer = self.input_proj(x)
                pos = self.pe_layer(x)
                transformer = self.transformer(transformer, None, pos)
                y = output_conv(transformer)
                transformer_encoder_features = transformer
            else:
                cur_fpn = lateral_conv(x)
                y = cur_fpn + F.interpolate(y, size=cur_fpn.shape[-2:], mode="nearest")
                y = output_conv(y)
            if num_cur_levels < self.maskformer_num_feature_levels:
                multi_scale_features.append(y)
                num_cur_levels += 1
        assert y is not None and transformer_encoder_features is not None
        return self.mask_features(y), transformer_encoder_features, multi_scale_features


# --------------------------------------------------------------------- mask decoder
class SelfAttentionLayer(nn.Module):
    """Self-attention (post-norm unless ``normalize_before``); returns the averaged weights too."""

    def __init__(
        self, d_model: int, nhead: int, dropout: float = 0.0, normalize_before: bool = False
    ) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.normalize_before = normalize_before

    def forward(
        self,
        tgt: Tensor,
        tgt_mask: Tensor | None = None,
        tgt_key_padding_mask: Tensor | None = None,
        query_pos: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """Tokens ``[L, B, C]``; positions added to queries and keys."""
        if self.normalize_before:
            tgt2 = self.norm(tgt)
            q = k = tgt2 if query_pos is None else tgt2 + query_pos
            tgt2, avg_attn = self.self_attn(
                q, k, value=tgt2, attn_mask=tgt_mask, key_padding_mask=tgt_key_padding_mask
            )
            return tgt + self.dropout(tgt2), avg_attn
        q = k = tgt if query_pos is None else tgt + query_pos
        tgt2, avg_attn = self.self_attn(
            q, k, value=tgt, attn_mask=tgt_mask, key_padding_mask=tgt_key_padding_mask
        )
        return self.norm(tgt + self.dropout(tgt2)), avg_attn


class CrossAttentionLayer(nn.Module):
    """Cross-attention (post-norm unless ``normalize_before``); returns the averaged weights."""

    def __init__(
        self, d_model: int, nhead: int, dropout: float = 0.0, normalize_before: bool = False
    ) -> None:
        super().__init__()
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.normalize_before = normalize_before

    def forward(
        self,
        tgt: Tensor,
        memory: Tensor,
        memory_mask: Tensor | None = None,
        memory_key_padding_mask: Tensor | None = None,
        pos: Tensor | None = None,
        query_pos: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """Queries ``[Q, B, C]`` attend to ``memory`` ``[K, B, C]``."""
        tgt2 = self.norm(tgt) if self.normalize_before else tgt
        tgt2, avg_attn = self.multihead_attn(
            query=tgt2 if query_pos is None else tgt2 + query_pos,
            key=memory if pos is None else memory + pos,
            value=memory,
            attn_mask=memory_mask,
            key_padding_mask=memory_key_padding_mask,
        )
        tgt = tgt + self.dropout(tgt2)
        return (tgt, avg_attn) if self.normalize_before else (self.norm(tgt), avg_attn)


class FFNLayer(nn.Module):
    """Feed-forward block (post-norm unless ``normalize_before``)."""

    def __init__(
        self,
        d_model: int,
        dim_feedforward: int = 2048,
        dropout: float = 0.0,
        activation: str = "relu",
        normalize_before: bool = False,
    ) -> None:
        super().__init__()
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm = nn.LayerNorm(d_model)
        self.activation = _get_activation_fn(activation)
        self.normalize_before = normalize_before

    def forward(self, tgt: Tensor) -> Tensor:
        """Tokens ``[..., C]``."""
        if self.normalize_before:
            tgt2 = self.linear2(self.dropout(self.activation(self.linear1(self.norm(tgt)))))
            return tgt + self.dropout(tgt2)
        tgt2 = self.linear2(self.dropout(self.activation(self.linear1(tgt))))
        return self.norm(tgt + self.dropout(tgt2))


class MLP(nn.Module):
    """Linear layers with ReLU between them."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        self.num_layers = num_layers
        h = [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(
            nn.Linear(n, k) for n, k in zip([input_dim, *h], [*h, output_dim], strict=True)
        )

    def forward(self, x: Tensor) -> Tensor:
        """Apply the layers."""
        for i, layer in enumerate(self.layers):
            x = F.relu(layer(x)) if i < self.num_layers - 1 else layer(x)
        return x


class BoltzFormerTextDecoder(nn.Module):
    """Masked-attention decoder with Boltzmann sampling, text tokens and an existence query.

    Args:
        language_encoder: The text encoder (its weights live under this module).
        in_channels: Channels of the pixel decoder's levels (no projection when = hidden_dim).
        hidden_dim: Query width.
        dim_proj: Width of the (unused in v2) ``class_embed`` projection.
        num_queries: Mask queries.
        nheads: Attention heads.
        dim_feedforward: Hidden width of the feed-forward blocks.
        dec_layers: Decoder layers.
        pre_norm: Pre-norm layers.
        mask_dim: Channels of the mask features.
        boltzmann_sampling: ``mask_threshold``, ``do_boltzmann``, ``sample_ratio``,
            ``base_temp``.
        pre_self_attention: Queries and text tokens attend to each other before the first
            prediction.
        output_classifier: Existence query and classifier.
    """

    def __init__(
        self,
        language_encoder: nn.Module,
        in_channels: int = 256,
        hidden_dim: int = 256,
        dim_proj: int = 256,
        num_queries: int = 100,
        nheads: int = 8,
        dim_feedforward: int = 2048,
        dec_layers: int = 10,
        pre_norm: bool = False,
        mask_dim: int = 256,
        boltzmann_sampling: dict[str, Any] | None = None,
        pre_self_attention: bool = False,
        output_classifier: bool = True,
    ) -> None:
        super().__init__()
        self.language_encoder = language_encoder
        self.num_queries = num_queries
        self.pe_layer = PositionEmbeddingSine(hidden_dim // 2, normalize=True)
        self.num_heads = nheads
        self.num_layers = dec_layers
        self.transformer_self_attention_layers = nn.ModuleList()
        self.transformer_cross_attention_layers = nn.ModuleList()
        self.transformer_ffn_layers = nn.ModuleList()
        self.output_classifier = output_classifier
        if output_classifier:
            self.classifier_cross_attention_layers = nn.ModuleList()
            self.classifier_ffn_layers = nn.ModuleList()
            self.classifier = nn.Linear(hidden_dim, 1)
        self.pre_self_attention = pre_self_attention
        if pre_self_attention:
            self.initial_self_attention_layer = SelfAttentionLayer(
                hidden_dim, nheads, normalize_before=pre_norm
            )
            self.initial_ffn_layer = FFNLayer(
                hidden_dim, dim_feedforward, normalize_before=pre_norm
            )
        for _ in range(dec_layers):
            self.transformer_self_attention_layers.append(
                SelfAttentionLayer(hidden_dim, nheads, normalize_before=pre_norm)
            )
            self.transformer_cross_attention_layers.append(
                CrossAttentionLayer(hidden_dim, nheads, normalize_before=pre_norm)
            )
            self.transformer_ffn_layers.append(
                FFNLayer(hidden_dim, dim_feedforward, normalize_before=pre_norm)
            )
            if output_classifier:
                self.classifier_cross_attention_layers.append(
                    CrossAttentionLayer(hidden_dim, nheads, normalize_before=pre_norm)
                )
                self.classifier_ffn_layers.append(
                    FFNLayer(hidden_dim, dim_feedforward, normalize_before=pre_norm)
                )
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        self.query_feat_ = nn.Embedding(num_queries, hidden_dim)
        self.query_embed_ = nn.Embedding(num_queries, hidden_dim)
        if output_classifier:
            self.classifier_query = nn.Embedding(1, hidden_dim)
        self.num_feature_levels = 3
        self.level_embed = nn.Embedding(self.num_feature_levels, hidden_dim)
        self.input_proj = nn.ModuleList()
        for _ in range(self.num_feature_levels):
            if in_channels != hidden_dim:
                self.input_proj.append(nn.Conv2d(in_channels, hidden_dim, kernel_size=1))
            else:
                self.input_proj.append(nn.Sequential())
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)
        self.class_embed = nn.Parameter(torch.empty(hidden_dim, dim_proj))
        self.boltzmann_sampling = boltzmann_sampling or {
            "mask_threshold": 0.5,
            "do_boltzmann": False,
            "sample_ratio": 0.1,
            "base_temp": 1,
        }

    def forward(
        self,
        x: list[Tensor],
        mask_features: Tensor,
        mask: Tensor | None = None,
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Tensor]:
        """Decode masks for one prompt per batch entry.

        Args:
            x: Three pixel-decoder levels ``[B, C, h_i, w_i]``, coarsest first.
            mask_features: ``[B, mask_dim, H/4, W/4]``.
            mask: Ignored (as in the original).
            extra: ``grounding_tokens`` ``[T, B, C]``.

        Returns:
            ``pred_gmasks`` ``[B, Q, H/4, W/4]``, ``pred_captions`` and ``object_existence``.
        """
        assert len(x) == self.num_feature_levels
        extra = extra or {}
        del mask
        src, pos, size_list = [], [], []
        for i in range(self.num_feature_levels):
            size_list.append(x[i].shape[-2:])
            pos.append(self.pe_layer(x[i], None).flatten(2).permute(2, 0, 1))
            proj = self.input_proj[i](x[i]).flatten(2) + self.level_embed.weight[i][None, :, None]
            src.append(proj.permute(2, 0, 1))
        _, bs, _ = src[0].shape
        query_embed = self.query_embed_.weight.unsqueeze(1).repeat(1, bs, 1)
        output = self.query_feat_.weight.unsqueeze(1).repeat(1, bs, 1)
        predictions_mask, predictions_captions = [], []
        if self.output_classifier:
            cls_output = self.classifier_query.weight.unsqueeze(1).repeat(1, bs, 1)
        text_output = extra["grounding_tokens"]
        text_embed = text_output.detach().clone()

        if self.pre_self_attention:
            combined_output = torch.cat([output, text_output], dim=0)
            combined_embed = torch.cat([query_embed, text_embed], dim=0)
            combined_output, _ = self.initial_self_attention_layer(
                combined_output, tgt_mask=None, tgt_key_padding_mask=None, query_pos=combined_embed
            )
            output = combined_output[: self.num_queries]
            text_output = combined_output[self.num_queries :]
            output = self.initial_ffn_layer(output)

        outputs_mask, attn_mask, outputs_caption = self.forward_prediction_heads(
            output, mask_features, attn_mask_target_size=size_list[0]
        )
        predictions_mask.append(outputs_mask)
        predictions_captions.append(outputs_caption)

        for i in range(self.num_layers):
            level_index = i % self.num_feature_levels
            attn_mask[torch.where(attn_mask.sum(-1) == attn_mask.shape[-1])] = False
            output, _ = self.transformer_cross_attention_layers[i](
                output,
                src[level_index],
                memory_mask=attn_mask,
                memory_key_padding_mask=None,
                pos=pos[level_index],
                query_pos=query_embed,
            )
            combined_output = torch.cat([output, text_output], dim=0)
            combined_embed = torch.cat([query_embed, text_embed], dim=0)
            combined_output, _ = self.transformer_self_attention_layers[i](
                combined_output, tgt_mask=None, tgt_key_padding_mask=None, query_pos=combined_embed
            )
            output = combined_output[: self.num_queries]
            text_output = combined_output[self.num_queries :]
            output = self.transformer_ffn_layers[i](output)
            outputs_mask, attn_mask, outputs_caption = self.forward_prediction_heads(
                output,
                mask_features,
                attn_mask_target_size=size_list[(i + 1) % self.num_feature_levels],
                layer_id=i,
            )
            predictions_mask.append(outputs_mask)
            predictions_captions.append(outputs_caption)
            if self.output_classifier:
                cls_output, _ = self.classifier_cross_attention_layers[i](
                    cls_output,
                    combined_output.detach(),
                    memory_mask=None,
                    memory_key_padding_mask=None,
                    pos=combined_embed.detach(),
                    query_pos=None,
                )
                cls_output = self.classifier_ffn_layers[i](cls_output)

        out = {"pred_gmasks": predictions_mask[-1], "pred_captions": predictions_captions[-1]}
        if self.output_classifier:
            out["object_existence"] = self.classifier(cls_output[0])
        return out

    def forward_prediction_heads(
        self,
        output: Tensor,
        mask_features: Tensor,
        attn_mask_target_size: torch.Size,
        layer_id: int = -1,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Mask logits, the next attention mask (True = hidden) and the caption embedding."""
        decoder_output = self.decoder_norm(output)
        assert not torch.isnan(decoder_output).any(), f"NaN after decoder_norm in {layer_id}"
        decoder_output = decoder_output.transpose(0, 1)
        mask_embed = self.mask_embed(decoder_output)
        outputs_mask = torch.einsum("bqc,bchw->bqhw", mask_embed, mask_features)
        class_embed = decoder_output @ self.class_embed
        attn_mask = F.interpolate(
            outputs_mask.detach(), size=attn_mask_target_size, mode="bilinear", align_corners=False
        )
        attn_mask = (
            attn_mask.sigmoid()
            .flatten(2)
            .unsqueeze(1)
            .repeat(1, self.num_heads, 1, 1)
            .flatten(0, 1)
        )
        threshold = self.boltzmann_sampling["mask_threshold"]
        sample_ratio = self.boltzmann_sampling["sample_ratio"]
        base_temp = self.boltzmann_sampling["base_temp"]
        _ori_ratio = (attn_mask >= threshold).float().mean().item()
        if self.boltzmann_sampling["do_boltzmann"]:
            temp = base_temp / (2 + layer_id)
            boltzmann_prob = torch.exp(attn_mask / temp)
            boltzmann_prob = boltzmann_prob * (attn_mask < threshold).float()
            boltzmann_prob = boltzmann_prob / boltzmann_prob.sum(dim=-1, keepdim=True)
            n_samples = int(attn_mask.shape[-1] * sample_ratio)
            masked_prob = (1 - boltzmann_prob) ** n_samples
            boltzmann_mask = (torch.rand_like(boltzmann_prob) < masked_prob).bool()
            _boltz_ratio = 1 - boltzmann_mask.float().mean().item()
            attn_mask = torch.logical_and((attn_mask < threshold).bool(), boltzmann_mask)
            _combined_ratio = 1 - attn_mask.float().mean().item()
        else:
            attn_mask = (attn_mask < threshold).bool()
        assert not torch.isnan(attn_mask).any(), f"NaN in attn_mask in layer {layer_id}"
        return outputs_mask, attn_mask, class_embed


# --------------------------------------------------------------------- text encoder
class LayerNorm(nn.Module):
    """TF-style LayerNorm (epsilon inside the square root), computed in float32."""

    def __init__(self, hidden_size: int, eps: float = 1e-12) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.bias = nn.Parameter(torch.zeros(hidden_size))
        self.variance_epsilon = eps

    def forward(self, x: Tensor) -> Tensor:
        """Normalise the last dimension."""
        pdtype = x.dtype
        x = x.float()
        u = x.mean(-1, keepdim=True)
        s = (x - u).pow(2).mean(-1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.variance_epsilon)
        return self.weight * x.to(pdtype) + self.bias


class QuickGELU(nn.Module):
    """``x * sigmoid(1.702 x)``."""

    def forward(self, x: Tensor) -> Tensor:
        """Apply the activation."""
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    """Pre-norm block of the CLIP-style text transformer (causal mask kept as an attribute)."""

    def __init__(self, d_model: int, n_head: int, attn_mask: Tensor | None = None) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(d_model, n_head)
        self.ln_1 = LayerNorm(d_model)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(d_model, d_model * 4))
        self.mlp.add_module("gelu", QuickGELU())
        self.mlp.add_module("c_proj", nn.Linear(d_model * 4, d_model))
        self.ln_2 = LayerNorm(d_model)
        self.attn_mask = attn_mask
        self.drop_path = nn.Identity()

    def attention(self, x: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        """Masked self-attention of tokens ``[L, N, C]``."""
        if self.attn_mask is not None:
            self.attn_mask = self.attn_mask.to(x.device)
        return self.attn(
            x,
            x,
            x,
            key_padding_mask=key_padding_mask,
            need_weights=False,
            attn_mask=self.attn_mask,
        )[0]

    def forward(self, x: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        """Apply the block."""
        x = x + self.drop_path(self.attention(self.ln_1(x), key_padding_mask=key_padding_mask))
        return x + self.drop_path(self.mlp(self.ln_2(x)))


class Transformer(nn.Module):
    """The language transformer (``language_transformer.Transformer``), autoregressive."""

    def __init__(
        self,
        context_length: int,
        vocab_size: int,
        width: int,
        layers: int,
        heads: int,
        autogressive: bool = True,
    ) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.context_length = context_length
        self.positional_embedding = nn.Parameter(torch.empty(context_length, width))
        self.autogressive = autogressive
        attn_mask = self.build_attention_mask() if autogressive else None
        self.resblocks = nn.ModuleList(
            ResidualAttentionBlock(width, heads, attn_mask) for _ in range(layers)
        )
        self.ln_final = LayerNorm(width)

    def build_attention_mask(self) -> Tensor:
        """Additive causal mask ``[L, L]`` (-inf above the diagonal)."""
        mask = torch.empty(self.context_length, self.context_length, device="cpu")
        mask.fill_(float("-inf"))
        return mask.triu_(1)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> dict[str, Tensor]:
        """Token ids ``[N, context_length]`` to ``last_hidden_state`` ``[N, L, width]``."""
        device = self.token_embedding.weight.device
        input_ids = input_ids.to(device)
        if attention_mask is not None:
            attention_mask = attention_mask.to(device)
        key_padding_mask = (
            (attention_mask == 0)
            if (not self.autogressive and attention_mask is not None)
            else None
        )
        x = self.token_embedding(input_ids) + self.positional_embedding.to(device)
        x = x.permute(1, 0, 2)
        for block in self.resblocks:
            x = block(x, key_padding_mask)
        return {"last_hidden_state": self.ln_final(x.permute(1, 0, 2))}


class SEEMLanguageEncoder(nn.Module):
    """SEEM's language encoder on already-tokenised text (CLIP tokenizer type)."""

    def __init__(
        self, encoder_transformer: Transformer, lang_projection: nn.Parameter, max_token_num: int
    ) -> None:
        super().__init__()
        self.tokenizer_type = "clip"
        self.encoder_transformer = encoder_transformer
        self.lang_proj = lang_projection
        self.max_token_num = max_token_num
        self.logit_scale = nn.Parameter(torch.ones([]))

    def get_text_embeddings(
        self, class_tokens: list[Tokens], name: str = "default", is_eval: bool = False
    ) -> None:
        """Store normalised class embeddings as ``{name}_text_embeddings`` (no output uses them).

        Args:
            class_tokens: Per class, the tokenised prompts ``[T, L]``: every template at
                evaluation (the original tokenises 81 per class), one at training (the original
                samples one template; row 0 is used here).
            name: Attribute prefix.
            is_eval: Average the normalised embeddings of all templates under ``no_grad``.
        """
        if not is_eval:
            ids = torch.stack([t["input_ids"][0] for t in class_tokens])
            masks = torch.stack([t["attention_mask"][0] for t in class_tokens])
            setattr(self, f"{name}_text_embeddings", self.forward_language((ids, masks)))
            return
        with torch.no_grad():
            embeddings = []
            for tokens in class_tokens:
                emb = self.forward_language((tokens["input_ids"], tokens["attention_mask"]))
                emb = emb.mean(dim=0)
                emb /= emb.norm()
                embeddings.append(emb)
            setattr(self, f"{name}_text_embeddings", torch.stack(embeddings, dim=0))

    def get_text_token_embeddings(
        self, txts: Tokens, name: str = "default", token: bool = True, norm: bool = False
    ) -> dict[str, Any]:
        """Projected token features and class embeddings of tokenised prompts (``token=True``)."""
        assert token, "this reference takes tokenised prompts"
        tokens = txts
        token_emb, class_emb = self.forward_language_token(
            (tokens["input_ids"], tokens["attention_mask"]), norm=norm
        )
        ret = {"tokens": tokens, "token_emb": token_emb, "class_emb": class_emb}
        setattr(self, f"{name}_token_embeddings", ret)
        return ret

    def forward_language(self, texts: tuple[Tensor, Tensor], norm: bool = True) -> Tensor:
        """Projected end-of-text features ``[N, dim_proj]`` (normalised when ``norm``)."""
        x = self.encoder_transformer(*texts)["last_hidden_state"]
        x = x[torch.arange(x.size(0)), texts[0].argmax(dim=-1)]
        x = x @ self.lang_proj
        if norm:
            x = x / (x.norm(dim=-1, keepdim=True) + 1e-7)
        return x

    def forward_language_token(
        self, texts: tuple[Tensor, Tensor], norm: bool = False
    ) -> tuple[Tensor, Tensor]:
        """Projected features of every token ``[N, L, dim_proj]`` and of end-of-text."""
        token_x = self.encoder_transformer(*texts)["last_hidden_state"]
        class_x = token_x[torch.arange(token_x.size(0)), texts[0].argmax(dim=-1)]
        class_x = class_x @ self.lang_proj
        token_x = token_x @ self.lang_proj
        if norm:
            class_x = class_x / (class_x.norm(dim=-1, keepdim=True) + 1e-7)
            token_x = token_x / (token_x.norm(dim=-1, keepdim=True) + 1e-7)
        return token_x, class_x


# ---------------------------------------------------------------------------- model
def tile_feature(feat: Tensor, p: int) -> Tensor:
    """``[B, C, H, W]`` to ``[B * p, C, H, W]``, each image repeated ``p`` times in a row."""
    b, c, h, w = feat.shape
    return feat.view(b, 1, c, h, w).expand(-1, p, -1, -1, -1).reshape(b * p, c, h, w)


class MaskFormerHead(nn.Module):
    """The pixel decoder and the text decoder (``sem_seg_head``)."""

    def __init__(
        self, pixel_decoder: TransformerEncoderPixelDecoder, predictor: BoltzFormerTextDecoder
    ) -> None:
        super().__init__()
        self.pixel_decoder = pixel_decoder
        self.predictor = predictor
        self.classes = list(CLASSES)

    def _grounding(self, tokens: Tokens) -> dict[str, Any]:
        """Prompt tokens ``[T, N, C]`` (own tokens, zero-padded), class embeddings, scale."""
        language_encoder = self.predictor.language_encoder
        gtext = language_encoder.get_text_token_embeddings(
            tokens, name="grounding", token=True, norm=False
        )
        query_emb = nn.utils.rnn.pad_sequence(
            [
                _token_emb[_tokens.bool()]
                for _token_emb, _tokens in zip(
                    gtext["token_emb"], gtext["tokens"]["attention_mask"], strict=True
                )
            ],
            padding_value=-1,
        )
        non_zero_query_mask = query_emb.sum(dim=-1) == -query_emb.shape[-1]
        query_emb[non_zero_query_mask] = 0
        return {
            "grounding_tokens": query_emb,
            "grounding_nonzero_mask": non_zero_query_mask.t(),
            "class_emb": gtext["class_emb"],
            "logit_scale": language_encoder.logit_scale,
        }

    def encode_prompts(
        self,
        tokens: Tokens,
        num_prompts: Tensor,
        class_tokens: list[Tokens] | None = None,
        eval: bool = True,
    ) -> dict[str, Any]:
        """v2's prompt features (class-name embeddings first, when their tokens are given)."""
        if class_tokens is not None:
            self.predictor.language_encoder.get_text_embeddings(class_tokens, is_eval=eval)
        extra = self._grounding(tokens)
        del extra["grounding_nonzero_mask"]
        extra["num_prompts"] = num_prompts
        return extra

    def forward(
        self, image_features: dict[str, Tensor], prompt_features: dict[str, Any]
    ) -> dict[str, Any]:
        """v2 (``biomedparse_3D.MaskFormerHead.forward``): decode every prompt on its image."""
        mask_features, _, multi_scale_features = self.pixel_decoder.forward_features(image_features)
        num_prompts = prompt_features["num_prompts"]
        p = int(num_prompts[0])
        if max(num_prompts) > min(num_prompts):
            num_prompts = num_prompts.to(mask_features.device)
            mask_features = mask_features.repeat_interleave(num_prompts, dim=0)
            multi_scale_features = [
                f.repeat_interleave(num_prompts, dim=0) for f in multi_scale_features
            ]
        else:
            mask_features = tile_feature(mask_features, p)
            multi_scale_features = [tile_feature(f, p) for f in multi_scale_features]
        predictions = self.predictor(
            x=multi_scale_features, mask_features=mask_features, extra=prompt_features
        )
        predictions["class_emb"] = prompt_features["class_emb"]
        predictions["logit_scale"] = prompt_features["logit_scale"]
        return predictions

    def forward_train(
        self,
        image_features: dict[str, Tensor],
        tokens: Tokens,
        num_prompts: Tensor,
        class_tokens: list[Tokens] | None = None,
    ) -> dict[str, Any]:
        """The training head (``src/model/biomedparse.py``): features tiled by the first count."""
        if class_tokens is not None:
            self.predictor.language_encoder.get_text_embeddings(class_tokens, is_eval=False)
        mask_features, _, multi_scale_features = self.pixel_decoder.forward_features(image_features)
        extra = self._grounding(tokens)
        p = int(num_prompts[0])
        if any(int(n) != p for n in num_prompts):
            print("Warning: different number of prompts for different images.")
        mask_features = tile_feature(mask_features, p)
        multi_scale_features = [tile_feature(f, p) for f in multi_scale_features]
        predictions = self.predictor(
            x=multi_scale_features, mask_features=mask_features, mask=None, extra=extra
        )
        predictions["class_emb"] = extra["class_emb"]
        predictions["logit_scale"] = extra["logit_scale"]
        return predictions


class BiomedParseModel(nn.Module):
    """BiomedParse v2 (``convolute_outputs: False``).

    ``inputs`` of :meth:`forward`: ``image`` ``[B, 3, H, W]`` in 0..255; ``tokens`` with
    ``input_ids`` and ``attention_mask`` ``[N, context_length]`` of the ``N`` prompts,
    image-major; ``num_prompts`` ``[B]``; optionally ``class_tokens`` (see
    :meth:`SEEMLanguageEncoder.get_text_embeddings`).
    """

    def __init__(
        self,
        backbone: D2FocalNet,
        sem_seg_head: MaskFormerHead,
        pixel_mean: Sequence[float] = (123.675, 116.280, 103.530),
        pixel_std: Sequence[float] = (58.395, 57.120, 57.375),
        gray_scale: bool = True,
        edge_queries: int = 0,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.sem_seg_head = sem_seg_head
        if gray_scale:
            mean, std = sum(pixel_mean) / len(pixel_mean), sum(pixel_std) / len(pixel_std)
            pixel_mean, pixel_std = [mean] * 3, [std] * 3
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(1, 3, 1, 1))
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(1, 3, 1, 1))
        self.edge_queries = edge_queries

    def _outputs(self, outputs: dict[str, Any]) -> dict[str, Any]:
        """Split off the edge queries' mean, average the others."""
        if self.edge_queries > 0:
            outputs["edge_masks"] = outputs["pred_gmasks"][:, -self.edge_queries :].mean(
                dim=1, keepdim=True
            )
            outputs["pred_gmasks"] = outputs["pred_gmasks"][:, : -self.edge_queries]
        else:
            outputs["edge_masks"] = None
        outputs["pred_gmasks"] = outputs["pred_gmasks"].mean(dim=1, keepdim=True)
        return {"predictions": outputs}

    def forward_train(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """``src/model/biomedparse.py``'s ``forward_train`` (with grad, as in fine-tuning)."""
        image = (inputs["image"] - self.pixel_mean) / self.pixel_std
        image_embedding = self.backbone(image)
        outputs = self.sem_seg_head.forward_train(
            image_embedding, inputs["tokens"], inputs["num_prompts"], inputs.get("class_tokens")
        )
        outputs["num_prompts"] = inputs["num_prompts"].to(image.device)
        return self._outputs(outputs)

    @torch.no_grad()
    def forward_eval(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """``biomedparse_2D.py``'s ``forward_eval``: v2 inference on a batch of images."""
        image = inputs["image"]
        mean, std = self.pixel_mean, self.pixel_std
        if image.shape[1] == 1:
            image = image.expand(-1, 3, -1, -1)
            if torch.all(mean == mean.flatten()[0]) and torch.all(std == std.flatten()[0]):
                mean, std = mean.mean(), std.mean()
        image = (image - mean) / std
        prompt_features = self.sem_seg_head.encode_prompts(
            inputs["tokens"], inputs["num_prompts"], inputs.get("class_tokens"), eval=True
        )
        outputs = self.sem_seg_head(
            image_features=self.backbone(image), prompt_features=prompt_features
        )
        outputs["num_prompts"] = prompt_features["num_prompts"].to(image.device)
        return self._outputs(outputs)

    def forward(self, inputs: dict[str, Any], mode: str = "eval") -> dict[str, Any]:
        """``mode`` "train" or "eval"."""
        if mode == "train":
            return self.forward_train(inputs)
        if mode == "eval":
            return self.forward_eval(inputs)
        msg = f"Unknown mode {mode}. Use 'train' or 'eval'."
        raise ValueError(msg)


# -------------------------------------------------------------------------- builders
def build_reference(
    embed_dim: int = 192,
    depths: Sequence[int] = (2, 2, 18, 2),
    focal_levels: Sequence[int] = (4, 4, 4, 4),
    focal_windows: Sequence[int] = (3, 3, 3, 3),
    drop_path_rate: float = 0.3,
    conv_dim: int = 512,
    nheads: int = 8,
    dim_feedforward: int = 2048,
    enc_layers: int = 6,
    dec_layers: int = 9,
    num_queries: int = 16,
    edge_queries: int = 4,
    text_width: int = 512,
    text_layers: int = 12,
    text_heads: int = 8,
    context_length: int = 77,
    vocab_size: int = 49408,
    groups: int = 32,
) -> BiomedParseModel:
    """The network of ``configs/model/biomedparse_3D.yaml`` (defaults: the released sizes).

    The smaller settings exist for tests; ``groups`` other than 32 replaces "GN" by
    GroupNorm(``groups``), as segfm's tiny network does.
    """
    backbone = D2FocalNet(
        patch_size=4,
        in_chans=3,
        embed_dim=embed_dim,
        depths=depths,
        mlp_ratio=4.0,
        drop_rate=0.0,
        drop_path_rate=drop_path_rate,
        focal_levels=focal_levels,
        focal_windows=focal_windows,
        use_conv_embed=True,
        use_postln=True,
        use_postln_in_modulation=False,
        scaling_modulator=True,
        use_layerscale=True,
    )

    def group_norm(channels: int) -> nn.Module:
        return nn.GroupNorm(groups, channels)

    norm: str | Callable[[int], nn.Module] = "GN" if groups == 32 else group_norm
    pixel_decoder = TransformerEncoderPixelDecoder(
        backbone.output_shape(),
        transformer_dropout=0.0,
        transformer_nheads=nheads,
        transformer_dim_feedforward=dim_feedforward,
        transformer_enc_layers=enc_layers,
        conv_dim=conv_dim,
        mask_dim=conv_dim,
        norm=norm,
        transformer_pre_norm=False,
    )
    language = SEEMLanguageEncoder(
        Transformer(context_length, vocab_size, text_width, text_layers, text_heads),
        nn.Parameter(torch.randn(text_width, conv_dim)),
        max_token_num=context_length,
    )
    predictor = BoltzFormerTextDecoder(
        language,
        in_channels=conv_dim,
        hidden_dim=conv_dim,
        dim_proj=conv_dim,
        num_queries=num_queries,
        nheads=nheads,
        dim_feedforward=dim_feedforward,
        dec_layers=dec_layers,
        pre_norm=False,
        mask_dim=conv_dim,
        boltzmann_sampling={
            "mask_threshold": 1.1,
            "do_boltzmann": True,
            "sample_ratio": 0.1,
            "base_temp": 1,
        },
        pre_self_attention=True,
    )
    return BiomedParseModel(
        backbone, MaskFormerHead(pixel_decoder, predictor), edge_queries=edge_queries
    )


def reference_tiny(
    vocab_size: int = 49408, context_length: int = 16, drop_path_rate: float = 0.3
) -> BiomedParseModel:
    """The sizes of ``segfm.models.biomedparse.biomedparse_tiny``."""
    return build_reference(
        embed_dim=8,
        depths=(1, 1, 1, 1),
        focal_levels=(2, 2, 2, 2),
        drop_path_rate=drop_path_rate,
        conv_dim=32,
        nheads=2,
        dim_feedforward=64,
        enc_layers=1,
        dec_layers=2,
        num_queries=6,
        edge_queries=2,
        text_width=32,
        text_layers=1,
        text_heads=2,
        context_length=context_length,
        vocab_size=vocab_size,
        groups=8,
    )
