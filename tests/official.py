"""Import segment-anything's networks without its package ``__init__`` (which needs torchvision).

A bare module with the package's ``__path__`` stands in for ``segment_anything`` while
``segment_anything.modeling`` and ``segment_anything.build_sam`` are imported; ``sys.modules``
is restored afterwards, so nothing else sees the stand-in. Tests and benchmarks share this one
helper (benchmarks import it as ``tests.official`` with the repository root on ``sys.path``).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import sys
import types
from pathlib import Path
from typing import Any

import torch


@functools.cache
def official() -> types.SimpleNamespace:
    """segment-anything's ``modeling`` and ``build_sam`` modules.

    Returns:
        Namespace with ``modeling`` (``Sam``, ``ImageEncoderViT``, ...), ``build_sam``
        (``sam_model_registry``, ...) and ``common`` (``LayerNorm2d``, ``MLPBlock``).
    """
    spec = importlib.util.find_spec("segment_anything")
    if spec is None or spec.origin is None:
        msg = "segment-anything is not installed (pip install segment-anything)"
        raise ImportError(msg)
    saved = {
        name: mod for name, mod in sys.modules.items() if name.split(".")[0] == "segment_anything"
    }
    stand_in = types.ModuleType("segment_anything")
    stand_in.__path__ = [str(Path(spec.origin).parent)]
    stand_in.__package__ = "segment_anything"
    sys.modules["segment_anything"] = stand_in
    try:
        modeling = importlib.import_module("segment_anything.modeling")
        build_sam = importlib.import_module("segment_anything.build_sam")
        common = importlib.import_module("segment_anything.modeling.common")
    finally:
        for name in [n for n in sys.modules if n.split(".")[0] == "segment_anything"]:
            del sys.modules[name]
        sys.modules.update(saved)
    return types.SimpleNamespace(modeling=modeling, build_sam=build_sam, common=common)


def official_sam(
    image_size: int = 1024,
    patch_size: int = 16,
    encoder_embed_dim: int = 768,
    encoder_depth: int = 12,
    encoder_num_heads: int = 12,
    encoder_global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11),
    window_size: int = 14,
    prompt_embed_dim: int = 256,
    mask_in_chans: int = 16,
    decoder_depth: int = 2,
    decoder_num_heads: int = 8,
    decoder_mlp_dim: int = 2048,
    iou_head_hidden_dim: int = 256,
    in_chans: int = 3,
) -> Any:
    """segment-anything's ``Sam`` with any hyper-parameters (its own builder fixes 1024 px).

    Argument names are those of ``segfm.models.build_sam._build_sam``, so one config dict
    builds both networks. Returned in eval mode.
    """
    modeling = official().modeling
    grid = image_size // patch_size
    sam = modeling.Sam(
        image_encoder=modeling.ImageEncoderViT(
            img_size=image_size,
            patch_size=patch_size,
            in_chans=in_chans,
            embed_dim=encoder_embed_dim,
            depth=encoder_depth,
            num_heads=encoder_num_heads,
            mlp_ratio=4,
            out_chans=prompt_embed_dim,
            qkv_bias=True,
            norm_layer=functools.partial(torch.nn.LayerNorm, eps=1e-6),
            use_rel_pos=True,
            window_size=window_size,
            global_attn_indexes=encoder_global_attn_indexes,
        ),
        prompt_encoder=modeling.PromptEncoder(
            embed_dim=prompt_embed_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(image_size, image_size),
            mask_in_chans=mask_in_chans,
        ),
        mask_decoder=modeling.MaskDecoder(
            num_multimask_outputs=3,
            transformer=modeling.TwoWayTransformer(
                depth=decoder_depth,
                embedding_dim=prompt_embed_dim,
                mlp_dim=decoder_mlp_dim,
                num_heads=decoder_num_heads,
            ),
            transformer_dim=prompt_embed_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=iou_head_hidden_dim,
        ),
    )
    return sam.eval()


def randomize_(module: torch.nn.Module, seed: int = 0, scale: float = 0.05) -> torch.nn.Module:
    """Add seeded Gaussian noise to every parameter and buffer (zero-initialised ones included)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in module.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(scale * torch.randn(tensor.shape, generator=generator))
    return module
