"""3D windows covering a target, decoded from clicks (SAM-Med3D's inference).

A 3D SAM sees cubes of ``image_size`` voxels. A target region is covered by one cube centred on
it, or by overlapping cubes when it is larger (:func:`segfm.inference.windows.region_windows`);
each cube is z-scored on its own and encoded once (kept in an :class:`EmbeddingCache`), every
cube is decoded with the clicks inside it and a mask prompt, and overlapping logits are averaged.

The network sees volumes in ``(x, y, z)`` axis order (TorchIO's, in which the released SAM-Med3D
weights were trained); the ``(z, y, x)`` arrays of segfm are transposed on the way in and out.
The network needs ``image_size``, ``embedding_size``, ``encode``, ``decode`` and
``postprocess`` (segfm's SAM built with ``spatial_dims=3``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segfm.inference.cache import EmbeddingCache
from segfm.inference.windows import crop_padded, inside, paste_add, region_windows, windows_box

#: a click: voxel indices (z, y, x) and 1 (foreground) or 0 (background)
Click = tuple[tuple[int, ...], int]
#: a box of voxels: (low corner, high corner), high exclusive
Region = tuple[tuple[int, ...], tuple[int, ...]]


@dataclass
class WindowInference:
    """Options of windowed 3D inference.

    Attributes:
        mask_threshold: Probability above which a voxel is foreground.
        window_overlap: Least overlap of the cubes that cover a target larger than one cube.
        mask_prompt: What the next click's mask prompt is: ``logits``, the previous step's
            logits (SAM-Med3D's inference and training); ``binary``, the previous label map
            of the class resized (the CVPR 2025 baseline).
    """

    mask_threshold: float = 0.5
    window_overlap: float = 0.25
    mask_prompt: Literal["logits", "binary"] = "logits"

    def __post_init__(self) -> None:
        """Check the values."""
        if not 0.0 < self.mask_threshold < 1.0:
            msg = f"mask_threshold must be in (0, 1), got {self.mask_threshold}"
            raise ValueError(msg)
        if self.mask_prompt not in ("logits", "binary"):
            msg = f"mask_prompt must be 'logits' or 'binary', got {self.mask_prompt!r}"
            raise ValueError(msg)
        if not 0.0 <= self.window_overlap < 1.0:
            msg = f"window_overlap must be in [0, 1), got {self.window_overlap}"
            raise ValueError(msg)


def to_net(x: Tensor) -> Tensor:
    """``[N, C, z, y, x]`` to the network's ``[N, C, x, y, z]``, and back (an involution)."""
    return x.permute(0, 1, 4, 3, 2)


def zscore_foreground(crops: Tensor) -> Tensor:
    """Z-score every crop ``[N, 1, *S]`` over its voxels > 0 (all voxels if fewer than 2).

    In float32, or in float64 for float64 crops.
    """
    x = crops.to(torch.promote_types(crops.dtype, torch.float32)).flatten(1)
    mask = x > 0
    mask = mask | (mask.sum(1, keepdim=True) < 2)
    count = mask.sum(1, keepdim=True)
    mean = (x * mask).sum(1, keepdim=True) / count
    var = (((x - mean) * mask) ** 2).sum(1, keepdim=True) / (count - 1).clamp(min=1)
    return ((x - mean) / var.sqrt().clamp(min=1e-8)).view_as(crops)


def empty_low(
    network: nn.Module, n: int, device: torch.device, dtype: torch.dtype = torch.float32
) -> Tensor:
    """The first mask prompt ``[n, 1, 4g, 4g, 4g]``: zeros, as SAM-Med3D feeds it."""
    side = 4 * network.embedding_size
    return torch.zeros((n, 1, side, side, side), device=device, dtype=dtype)


def decode_points(
    network: nn.Module,
    embeddings: Tensor,
    coords: Tensor | None,
    labels: Tensor | None,
    low: Tensor,
) -> Tensor:
    """Low-res logits (network orientation) from clicks ``[N, P, 3]`` in ``(z, y, x)``."""
    points = None if coords is None else (coords.flip(-1).float(), labels)
    logits, _ = network.decode(embeddings, points=points, masks=low, multimask_output=False)
    return logits


def full_logits(network: nn.Module, low: Tensor) -> Tensor:
    """Low-res logits to cube-size logits ``[N, 1, z, y, x]``."""
    return to_net(network.postprocess(low, network.image_size))


def click_region(clicks: list[Click]) -> Region:
    """The bounding box ``[lo, hi)`` of the positive clicks (of all clicks if none is positive)."""
    points = np.asarray([p for p, label in clicks if label == 1] or [p for p, _ in clicks])
    return tuple(int(v) for v in points.min(0)), tuple(int(v) + 1 for v in points.max(0))


def encode_windows(
    network: nn.Module,
    volume: Tensor,
    starts: list[tuple[int, ...]],
    cache: EmbeddingCache,
    zscore: bool = True,
) -> Tensor:
    """Embeddings of the cubes at ``starts``, each normalised on its own, cached per cube set."""
    store = cache.store(volume, network)
    key = tuple(starts)
    if key not in store:
        size = network.image_size
        fill = float(volume.min())
        crops = [crop_padded(volume, st, size, fill)[None, None] for st in starts]
        store[key] = torch.cat(
            [network.encode(to_net(zscore_foreground(c) if zscore else c)) for c in crops]
        )
    return store[key]


def decode_windows(
    network: nn.Module,
    embeddings: Tensor,
    lows: Tensor,
    starts: list[tuple[int, ...]],
    offset: tuple[int, ...],
    clicks: list[Click],
    shape: tuple[int, ...],
) -> tuple[Tensor, Tensor]:
    """Decode every cube with its clicks and mask prompt; average the overlapping logits.

    Args:
        network: The 3D network.
        embeddings: ``[W, C, *g]``, one per cube.
        lows: Mask prompts ``[W, 1, *l]``.
        starts: Cube corners in the volume.
        offset: Low corner of the covered box in the volume.
        clicks: Clicks in volume voxels.
        shape: Shape of the covered box.

    Returns:
        The logits of the covered box (-inf where no cube reaches) and the new low-res logits
        ``[W, 1, *l]``.
    """
    device = embeddings.device
    size = network.image_size
    sum_logits = torch.zeros(shape, device=device)
    count = torch.zeros(shape, device=device)
    new_lows = []
    points = torch.tensor([c for c, _ in clicks], device=device).view(-1, 3)
    labels = torch.tensor([lab for _, lab in clicks], device=device, dtype=torch.long)
    for i, start in enumerate(starts):
        keep = inside(points, start, size)
        emb, low_in = embeddings[i : i + 1], lows[i : i + 1]
        if keep.any():
            local = points[keep] - torch.tensor(start, device=device)
            low = decode_points(network, emb, local[None], labels[keep][None], low_in)
        else:
            low = decode_points(network, emb, None, None, low_in)
        new_lows.append(low)
        logits = full_logits(network, low)[0, 0]
        rel = tuple(s - o for s, o in zip(start, offset, strict=True))
        paste_add(sum_logits, logits, rel)
        paste_add(count, torch.ones_like(logits), rel)
    logits = sum_logits / count.clamp(min=1)
    logits[count == 0] = -torch.inf  # probability 0 where no cube reaches
    return logits, torch.cat(new_lows)


@torch.no_grad()
def segment_region(
    network: nn.Module,
    volume: Tensor,
    region: Region,
    clicks: list[Click],
    cache: EmbeddingCache,
    options: WindowInference,
    previous: Tensor | None = None,
    zscore: bool = True,
    previous_logits: tuple[Tensor, Region] | None = None,
    logits_out: list[tuple[Tensor, Region]] | None = None,
) -> tuple[Tensor, Region]:
    """Segment one target of a volume from its clicks, in the cubes covering ``region``.

    Args:
        network: The 3D network.
        volume: Intensities ``[D, H, W]``.
        region: The box to cover (e.g. the target's bounding box), ``(lo, hi)``.
        clicks: Clicks ``((z, y, x), 1 or 0)``, decoded together.
        cache: Embedding cache (the cubes of one volume are encoded once).
        options: Threshold and overlap.
        previous: A previous binary prediction ``[D, H, W]`` given as the mask prompt (the
            CVPR 2025 baseline's binary low-res mask); zeros otherwise.
        zscore: Z-score each cube over its voxels > 0 (SAM-Med3D); False when the data module
            normalised already.
        previous_logits: The previous step's logits of a box and that box (``logits_out`` of
            the previous call): the mask prompt of each cube is their crop (0 outside the box,
            the logit of the empty first prompt) resized to the low-res grid, as SAM-Med3D's
            own inference feeds back its logits. Takes precedence over ``previous``.
        logits_out: When given, receives this step's logits of the covered box and the box
            (for the next call's ``previous_logits``).

    Returns:
        The probability map of the covered box and that box ``(lo, hi)``.
    """
    size = network.image_size
    starts = region_windows(region[0], region[1], size, options.window_overlap)
    box_lo, box_hi = windows_box(starts, size, volume.shape)
    embeddings = encode_windows(network, volume, starts, cache, zscore)
    lows = empty_low(network, len(starts), volume.device)
    masks = None
    if previous_logits is not None:
        logits, (lo, _) = previous_logits
        logits = logits.nan_to_num(neginf=0.0)  # no cube reached: unknown, as outside the box
        local = [tuple(a - b for a, b in zip(st, lo, strict=True)) for st in starts]
        masks = torch.stack([crop_padded(logits, st, size) for st in local])
    elif previous is not None:
        masks = torch.stack([crop_padded(previous.float(), st, size) for st in starts])
    if masks is not None:
        lows = F.interpolate(to_net(masks[:, None]), size=lows.shape[2:], mode="trilinear")
    shape = tuple(b - a for a, b in zip(box_lo, box_hi, strict=True))
    logits, _ = decode_windows(network, embeddings, lows, starts, box_lo, clicks, shape)
    if logits_out is not None:
        logits_out.append((logits, (box_lo, box_hi)))
    return torch.sigmoid(logits), (box_lo, box_hi)


def paste_class(
    seg: Tensor, best: Tensor, prob: Tensor, region: Region, class_id: int, threshold: float
) -> None:
    """Write a class's probability map (of box ``region``) into the label map, in place.

    A voxel goes to the class when its probability is above the threshold and above that of the
    classes written before (kept in ``best``).
    """
    box = tuple(slice(a, b) for a, b in zip(*region, strict=True))
    win = (prob > threshold) & (prob > best[box])
    seg[box][win] = class_id
    best[box][win] = prob[win]
