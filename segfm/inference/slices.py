"""Slice propagation: a 2D box-prompted network segments a volume slice after slice (MedSAM).

Every class starts on the middle slice of its 3D box, from the box's 2D rectangle there; each
neighbouring slice is then segmented from the box of the previous slice's mask grown by a margin
(the middle rectangle when the previous mask is empty), within the class's slice range. Clicks
refine single slices afterwards.

The network needs ``image_size``, ``encode(images [N, 3, S, S]) -> embeddings`` and
``decode(embeddings, points=, boxes=, multimask_output=) -> (logits, scores)`` (segfm's SAM).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segfm.inference.cache import EmbeddingCache
from segfm.prompts import expand_boxes, masks_to_boxes

#: a click: voxel indices (z, y, x) and 1 (foreground) or 0 (background)
Click = tuple[tuple[int, ...], int]


@dataclass
class SlicePropagation:
    """Options of slice propagation.

    Attributes:
        mask_threshold: Probability above which a pixel is foreground.
        propagation_margin: Pixels added on each side of the previous slice's box.
        encode_batch_size: Slices encoded together.
    """

    mask_threshold: float = 0.5
    propagation_margin: int = 3
    encode_batch_size: int = 8

    def __post_init__(self) -> None:
        """Check the values."""
        if not 0.0 < self.mask_threshold < 1.0:
            msg = f"mask_threshold must be in (0, 1), got {self.mask_threshold}"
            raise ValueError(msg)
        if self.propagation_margin < 0 or self.encode_batch_size < 1:
            msg = (
                "propagation_margin must be >= 0 and encode_batch_size >= 1, got "
                f"{self.propagation_margin} and {self.encode_batch_size}"
            )
            raise ValueError(msg)


def preprocess_slices(slices: Tensor, size: int) -> Tensor:
    """The 2D network input: 3 channels, bicubic resize to ``size``, min-max to [0, 1].

    Args:
        slices: Grey slices ``[N, H, W]``.
        size: Side of the network input.

    Returns:
        Network input ``[N, 3, size, size]``.
    """
    x = F.interpolate(
        slices[:, None].float(),
        size=(size, size),
        mode="bicubic",
        antialias=True,
        align_corners=False,
    )
    lo = x.amin(dim=(1, 2, 3), keepdim=True)
    hi = x.amax(dim=(1, 2, 3), keepdim=True)
    x = (x - lo) / (hi - lo).clamp(min=1e-8)
    return x.expand(-1, 3, -1, -1)


def encode_slices(
    network: nn.Module, volume: Tensor, zs: list[int], cache: EmbeddingCache, batch_size: int
) -> dict[int, Tensor]:
    """Embeddings ``[1, C, g, g]`` of slices ``zs``, ``batch_size`` at a time.

    Slices already in ``cache`` for this volume and these weights are not encoded again.
    """
    slices = cache.store(volume, network)
    missing = [z for z in zs if z not in slices]
    for i in range(0, len(missing), batch_size):
        chunk = missing[i : i + batch_size]
        emb = network.encode(preprocess_slices(volume[chunk], network.image_size))
        slices.update({z: emb[j : j + 1] for j, z in enumerate(chunk)})
    return {z: slices[z] for z in zs}  # type: ignore[misc]


def decode_slices(
    network: nn.Module,
    embeddings: Tensor,
    boxes: Tensor | None,
    size: tuple[int, int],
    points: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """Probability maps ``[N, H, W]`` (float32) of N slice embeddings from boxes and/or points.

    Args:
        network: The 2D network.
        embeddings: ``[N, C, g, g]``.
        boxes: ``[N, 4]`` (``x0, y0, x1, y1``) in original pixels, or None.
        size: Original slice size ``(H, W)``.
        points: Coordinates ``[N, P, 2]`` (``x, y``) in original pixels and labels ``[N, P]``.
    """
    h, w = size
    scale = torch.tensor([network.image_size / w, network.image_size / h], device=embeddings.device)
    logits, _ = network.decode(
        embeddings,
        points=None if points is None else (points[0] * scale, points[1]),
        boxes=None if boxes is None else boxes * scale.repeat(2),
        multimask_output=False,
    )
    logits = F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False)
    return torch.sigmoid(logits)[:, 0].float()  # float32 under bf16 autocast too


def middle_box(box: dict[str, int], device: torch.device) -> Tensor:
    """The 2D rectangle ``(x0, y0, x1, y1)`` of a CVPR box on its middle slice."""
    corners = [box["z_mid_x_min"], box["z_mid_y_min"], box["z_mid_x_max"], box["z_mid_y_max"]]
    return torch.tensor(corners, dtype=torch.float32, device=device)


@torch.no_grad()
def propagate(
    network: nn.Module,
    volume: Tensor,
    boxes: dict[int, dict[str, int]],
    cache: EmbeddingCache,
    options: SlicePropagation,
) -> Tensor:
    """Segment classes of a volume from their 3D boxes by slice propagation.

    The fronts of all classes and both directions advance together, so each step is one
    decoder call.

    Args:
        network: The 2D network.
        volume: Grey volume ``[D, H, W]``.
        boxes: Per class, ``z_min``, ``z_max``, ``z_mid`` and the 2D box on ``z_mid``
            (see :func:`segfm.prompts.volume_boxes`).
        cache: Embedding cache (kept across the steps of one volume).
        options: Threshold, margin and encoding batch.

    Returns:
        Label volume ``[D, H, W]`` (int64); overlaps go to the most probable class.
    """
    depth, h, w = volume.shape
    needed = sorted({z for b in boxes.values() for z in range(b["z_min"], b["z_max"] + 1)})
    embedded = encode_slices(network, volume, needed, cache, options.encode_batch_size)
    threshold, margin = options.mask_threshold, options.propagation_margin
    best = torch.zeros((depth, h, w), device=volume.device)
    seg = torch.zeros((depth, h, w), dtype=torch.long, device=volume.device)
    mids = {c: middle_box(b, volume.device) for c, b in boxes.items()}
    # a front: [class, slice, direction, previous probability map or None]
    fronts: list[list[Any]] = [[c, b["z_mid"], 0, None] for c, b in boxes.items()]
    while fronts:
        prompts = []
        for c, _, _, prev in fronts:
            if prev is not None and (prev > threshold).any():
                found = masks_to_boxes((prev > threshold)[None])
                prompts.append(expand_boxes(found, margin, (h, w))[0])
            else:
                prompts.append(mids[c])
        embeddings = torch.cat([embedded[z] for _, z, _, _ in fronts])
        probs = decode_slices(network, embeddings, torch.stack(prompts), (h, w))
        advanced = []
        for (c, z, step, _), prob in zip(fronts, probs, strict=True):
            win = (prob > threshold) & (prob > best[z])
            seg[z][win] = c
            best[z][win] = prob[win]
            for nxt in (1, -1) if step == 0 else (step,):
                if boxes[c]["z_min"] <= z + nxt <= boxes[c]["z_max"]:
                    advanced.append([c, z + nxt, nxt, prob])
        fronts = advanced
    return seg


@torch.no_grad()
def refine_slices(
    network: nn.Module,
    volume: Tensor,
    seg: Tensor,
    clicks: dict[int, list[Click]],
    boxes: dict[int, dict[str, int] | None],
    cache: EmbeddingCache,
    options: SlicePropagation,
) -> Tensor:
    """Refine a label map with clicks, slice by slice, in place.

    Each slice with clicks of a class is decoded again from the class's box on that slice (the
    current mask's box grown by the margin, or the 3D box's middle rectangle inside its slice
    range) and the slice's clicks as point prompts; the class's mask on that slice is replaced.

    Args:
        network: The 2D network.
        volume: Grey volume ``[D, H, W]``.
        seg: Label map ``[D, H, W]`` to refine (modified and returned).
        clicks: Per class id its clicks ``((z, y, x), 1 or 0)``.
        boxes: Per class id its CVPR box, or None.
        cache: Embedding cache.
        options: Threshold, margin and encoding batch.

    Returns:
        ``seg``.
    """
    h, w = volume.shape[1:]
    device = volume.device
    for c, given in clicks.items():
        by_slice: dict[int, list[Click]] = {}
        for point, label in given:
            by_slice.setdefault(int(point[0]), []).append((tuple(point), label))
        box3d = boxes.get(c)
        for z, on_slice in sorted(by_slice.items()):
            mask = seg[z] == c
            box = None
            if mask.any():
                box = expand_boxes(masks_to_boxes(mask[None]), options.propagation_margin, (h, w))[
                    0
                ]
            elif box3d is not None and box3d["z_min"] <= z <= box3d["z_max"]:
                box = middle_box(box3d, device)
            coords = torch.tensor(
                [[p[2], p[1]] for p, _ in on_slice], dtype=torch.float32, device=device
            )
            labels = torch.tensor([lab for _, lab in on_slice], device=device)
            embedding = encode_slices(network, volume, [z], cache, options.encode_batch_size)[z]
            prob = decode_slices(
                network,
                embedding,
                None if box is None else box[None],
                (h, w),
                (coords[None], labels[None]),
            )[0]
            seg[z][mask] = 0
            seg[z][(prob > options.mask_threshold) & (seg[z] == 0)] = c
    return seg
