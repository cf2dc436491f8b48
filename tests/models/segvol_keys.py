"""The 474 keys and shapes of the released SegVol_v1.pth, written out from SegVol's sources.

Independent of segfm's SegVol: each entry follows from ``network/model.py`` and
``segment_anything_volumetric`` (MONAI 0.9 ViT, CLIPTextConfig() text tower).
"""

from __future__ import annotations

Shapes = dict[str, tuple[int, ...]]


def _linear(name: str, n_out: int, n_in: int, bias: bool = True) -> Shapes:
    out = {f"{name}.weight": (n_out, n_in)}
    if bias:
        out[f"{name}.bias"] = (n_out,)
    return out


def _norm(name: str, *shape: int) -> Shapes:
    return {f"{name}.weight": shape, f"{name}.bias": shape}


def _image_encoder() -> Shapes:
    p = "image_encoder."
    out: Shapes = {f"{p}patch_embedding.position_embeddings": (1, 2048, 768)}
    out |= _linear(f"{p}patch_embedding.patch_embeddings.1", 768, 4 * 16 * 16)
    for i in range(12):
        b = f"{p}blocks.{i}."
        out |= _linear(b + "mlp.linear1", 3072, 768) | _linear(b + "mlp.linear2", 768, 3072)
        out |= _norm(b + "norm1", 768) | _linear(b + "attn.out_proj", 768, 768)
        out |= _linear(b + "attn.qkv", 2304, 768, bias=False) | _norm(b + "norm2", 768)
    return out | _norm(f"{p}norm", 768)


def _text_encoder() -> Shapes:
    t = "text_encoder.clip_text_model.text_model."
    out: Shapes = {
        f"{t}embeddings.token_embedding.weight": (49408, 512),
        f"{t}embeddings.position_embedding.weight": (77, 512),
    }
    for i in range(12):
        layer = f"{t}encoder.layers.{i}."
        for proj in ("k_proj", "v_proj", "q_proj", "out_proj"):
            out |= _linear(f"{layer}self_attn.{proj}", 512, 512)
        out |= _norm(layer + "layer_norm1", 512)
        out |= _linear(layer + "mlp.fc1", 2048, 512) | _linear(layer + "mlp.fc2", 512, 2048)
        out |= _norm(layer + "layer_norm2", 512)
    out |= _norm(f"{t}final_layer_norm", 512)
    return out | _linear("text_encoder.dim_align", 768, 512)


def _prompt_encoder() -> Shapes:
    p = "prompt_encoder."
    out: Shapes = {f"{p}pe_layer.positional_encoding_gaussian_matrix": (3, 384)}
    for i in range(4):
        out[f"{p}point_embeddings.{i}.weight"] = (1, 768)
    out[f"{p}not_a_point_embed.weight"] = (1, 768)
    m = f"{p}mask_downscaling."
    out |= {f"{m}0.weight": (4, 1, 2, 2), f"{m}0.bias": (4,)} | _norm(f"{m}1", 4)
    out |= {f"{m}3.weight": (16, 4, 2, 2), f"{m}3.bias": (16,)} | _norm(f"{m}4", 16)
    out |= {f"{m}6.weight": (768, 16, 1, 1), f"{m}6.bias": (768,)}
    return out | {f"{p}no_mask_embed.weight": (1, 768)}


def _attention(name: str, internal: int) -> Shapes:
    out: Shapes = {}
    for proj in ("q_proj", "k_proj", "v_proj"):
        out |= _linear(f"{name}.{proj}", internal, 768)
    return out | _linear(f"{name}.out_proj", 768, internal)


def _mask_decoder() -> Shapes:
    d = "mask_decoder."
    out: Shapes = {}
    for i in range(2):
        layer = f"{d}transformer.layers.{i}."
        out |= _attention(layer + "self_attn", 768) | _norm(layer + "norm1", 768)
        out |= _attention(layer + "cross_attn_token_to_image", 384) | _norm(layer + "norm2", 768)
        out |= _linear(layer + "mlp.lin1", 2048, 768) | _linear(layer + "mlp.lin2", 768, 2048)
        out |= _norm(layer + "norm3", 768) | _norm(layer + "norm4", 768)
        out |= _attention(layer + "cross_attn_image_to_token", 384)
    out |= _attention(f"{d}transformer.final_attn_token_to_image", 384)
    out |= _norm(f"{d}transformer.norm_final_attn", 768)
    out |= {f"{d}iou_token.weight": (1, 768), f"{d}mask_tokens.weight": (4, 768)}
    up = f"{d}output_upscaling."
    out |= {f"{up}0.weight": (768, 192, 2, 2, 2), f"{up}0.bias": (192,)}
    out |= _norm(f"{up}1", 192, 16, 32, 32)  # the fixed-shape LayerNorm quirk
    out |= {f"{up}3.weight": (192, 96, 2, 2, 2), f"{up}3.bias": (96,)}
    for i in range(4):
        h = f"{d}output_hypernetworks_mlps.{i}.layers."
        out |= _linear(h + "0", 768, 768) | _linear(h + "1", 768, 768) | _linear(h + "2", 96, 768)
    h = f"{d}iou_prediction_head.layers."
    out |= _linear(h + "0", 256, 768) | _linear(h + "1", 256, 256) | _linear(h + "2", 4, 256)
    return out | _linear(f"{d}txt_align_upscaled_embedding", 96, 768)


def official_shapes() -> Shapes:
    """``{key: shape}`` of the 474 tensors of SegVol_v1.pth (``module.`` prefix removed)."""
    return _image_encoder() | _mask_decoder() | _prompt_encoder() | _text_encoder()
