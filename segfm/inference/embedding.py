"""Whole-volume embedding: an anatomical-embedding network over a volume of any shape."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segfm.models.anatomical_embedding.network import COARSE_STRIDE, FINE_STRIDE

#: the network's input must be a multiple of this ``(z, y, x)`` for exact strides
INPUT_MULTIPLE = (4, 16, 16)


def _out_shape(shape: tuple[int, ...], stride: tuple[int, int, int]) -> tuple[int, ...]:
    return tuple(math.ceil(n / s) for n, s in zip(shape, stride, strict=True))


@torch.no_grad()
def embed_volume(
    model: nn.Module, volume: Tensor, pad_value: float | None = None
) -> dict[str, Tensor]:
    """Embed one whole volume.

    The volume is padded at the far end of each axis to a multiple of :data:`INPUT_MULTIPLE`
    (with ``pad_value``, default its minimum), embedded on the model's device, and the padding
    is cut from the outputs again: ``fine`` (and ``semantic``) cover ``ceil(D/2), ceil(H/2),
    ceil(W/2)`` voxels, ``coarse`` ``ceil(D/4), ceil(H/16), ceil(W/16)``; voxel ``i`` of a grid
    of stride ``s`` covers input voxels ``s*i ... s*i + s - 1``.

    Args:
        model: The network (see
            :func:`segfm.checkpoints.anatomical_embedding.load_embedding_model`); evaluated in
            eval mode.
        volume: Intensities ``[D, H, W]``, normalised as in training.
        pad_value: Value of the padding.

    Returns:
        ``{"fine": [E, d, h, w], "coarse": [E, d', h', w'], ("semantic": [E, d, h, w])}``,
        float32, unit norm along ``E``, on the model's device.
    """
    if volume.ndim != 3:
        msg = f"embed_volume takes one volume [D, H, W], got shape {tuple(volume.shape)}"
        raise ValueError(msg)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    shape = tuple(volume.shape)
    pads: list[int] = []
    for n, m in zip(reversed(shape), reversed(INPUT_MULTIPLE), strict=True):
        pads += [0, (-n) % m]
    value = float(volume.min()) if pad_value is None else pad_value
    x = F.pad(volume.to(device, torch.float32)[None, None], pads, value=value)
    out = model(x)
    model.train(was_training)
    result = {}
    for key, emb in out.items():
        stride = COARSE_STRIDE if key == "coarse" else FINE_STRIDE
        d, h, w = _out_shape(shape, stride)
        result[key] = emb[0, :, :d, :h, :w].float()
    return result
