"""Box prompts: tight 2D boxes, training jitter, and the CVPR 2025 challenge's 3D boxes."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def masks_to_boxes(masks: Tensor) -> Tensor:
    """Tight bounding boxes of 2D binary masks.

    Args:
        masks: Binary masks ``[N, H, W]``.

    Returns:
        Boxes ``[N, 4]`` as ``(x_min, y_min, x_max, y_max)`` in pixel indices (inclusive, float).
        An empty mask gives the whole image.
    """
    if masks.ndim != 3:
        msg = f"masks must be [N, H, W], got shape {tuple(masks.shape)}"
        raise ValueError(msg)
    _n, h, w = masks.shape
    masks = masks.bool()
    rows = masks.any(dim=2)  # [N, H]
    cols = masks.any(dim=1)  # [N, W]
    ys = torch.arange(h, device=masks.device)
    xs = torch.arange(w, device=masks.device)
    big = max(h, w) + 1
    y_min = torch.where(rows, ys, big).amin(dim=1)
    y_max = torch.where(rows, ys, -1).amax(dim=1)
    x_min = torch.where(cols, xs, big).amin(dim=1)
    x_max = torch.where(cols, xs, -1).amax(dim=1)
    boxes = torch.stack([x_min, y_min, x_max, y_max], dim=1).float()
    empty = ~rows.any(dim=1)
    if empty.any():
        whole = torch.tensor([0.0, 0.0, w - 1.0, h - 1.0], device=masks.device)
        boxes[empty] = whole
    return boxes


def jitter_boxes(
    boxes: Tensor, max_shift: int, size: tuple[int, int], generator: torch.Generator | None = None
) -> Tensor:
    """Push every side of each box outwards by a random 0..``max_shift`` pixels (MedSAM's rule).

    Args:
        boxes: Boxes ``[N, 4]`` as ``(x_min, y_min, x_max, y_max)``.
        max_shift: Largest outward shift of one side, in pixels (inclusive).
        size: Image size ``(H, W)``; boxes are clamped to ``[0, W] x [0, H]``.
        generator: Random generator (on the boxes' device) for reproducible shifts.

    Returns:
        Enlarged boxes ``[N, 4]``.
    """
    if max_shift < 0:
        msg = f"max_shift must be >= 0, got {max_shift}"
        raise ValueError(msg)
    if max_shift == 0:
        return boxes.clone()
    device = generator.device if generator is not None else boxes.device
    shift = torch.randint(0, max_shift + 1, boxes.shape, generator=generator, device=device)
    shift = shift.to(device=boxes.device, dtype=boxes.dtype)
    sign = torch.tensor([-1.0, -1.0, 1.0, 1.0], device=boxes.device, dtype=boxes.dtype)
    out = boxes + sign * shift
    h, w = size
    upper = torch.tensor([w, h, w, h], device=boxes.device, dtype=boxes.dtype)
    return torch.minimum(out.clamp(min=0), upper)


def expand_boxes(boxes: Tensor, margin: float, size: tuple[int, int]) -> Tensor:
    """Grow boxes by a fixed margin on every side, clamped to the image.

    Args:
        boxes: Boxes ``[N, 4]`` as ``(x_min, y_min, x_max, y_max)``.
        margin: Pixels added on each side.
        size: Image size ``(H, W)``.

    Returns:
        Enlarged boxes ``[N, 4]``.
    """
    h, w = size
    sign = torch.tensor([-1.0, -1.0, 1.0, 1.0], device=boxes.device, dtype=boxes.dtype)
    upper = torch.tensor([w - 1, h - 1, w - 1, h - 1], device=boxes.device, dtype=boxes.dtype)
    return torch.minimum((boxes + sign * margin).clamp(min=0), upper)


#: seed of the box margins: ``get_boxes.py`` seeds numpy's global generator with 2025
BOX_SEED = 2025
#: largest margin draw (exclusive), in pixels of a 256-pixel slice: ``np.random.randint(0, 6)``
MAX_BOX_SHIFT = 6


def volume_boxes(
    label: Tensor, class_ids: list[int], margin: bool = True, seed: int = BOX_SEED
) -> dict[int, dict[str, int]]:
    """3D box prompts of classes in a label volume, by the CVPR 2025 challenge's ``get_boxes.py``.

    The box of a class is its slice range ``[z_min, z_max]`` (closed, tight) and a 2D box on its
    middle slice ``z_mid``: the *upper* middle of the slices where the class is present
    (``z_indices[len(z_indices) // 2]`` of the sorted unique slice indices), so the middle
    slice always contains the class even when its extent in z has gaps.

    With ``margin`` (the challenge's rule), each side of the tight 2D box moves outwards by a
    random margin: per class one draw ``shift = randint(0, 6)``, then ``int(shift * W / 256)``
    pixels in x and ``int(shift * H / 256)`` in y (``H``, ``W``: the slice size, so a 512-wide
    slice moves twice as far), clipped to ``[0, W - 1]`` and ``[0, H - 1]``. The draws come
    from ``numpy.random.RandomState(seed)``, one new generator per call (per case), one
    ``randint(0, 6, 1)`` per boxed class in sorted class order; the official script draws from
    numpy's global generator seeded once per process of a multiprocessing pool (and draws
    colours for its pictures in between), so its exact margins cannot be reproduced, only
    their distribution. Without ``margin`` the 2D box is tight.

    Args:
        label: Label volume ``[D, H, W]``.
        class_ids: Classes to box; classes absent from the volume are skipped (and draw no
            margin).
        margin: Widen the 2D boxes by the challenge's random margin; False: tight boxes.
        seed: Seed of the margins.

    Returns:
        ``{class_id: {"z_min", "z_max", "z_mid", "z_mid_x_min", "z_mid_y_min", "z_mid_x_max",
        "z_mid_y_max"}}`` with integer pixel indices.
    """
    if label.ndim != 3:
        msg = f"label must be [D, H, W], got shape {tuple(label.shape)}"
        raise ValueError(msg)
    _d, h, w = label.shape
    rng = np.random.RandomState(seed) if margin else None
    out: dict[int, dict[str, int]] = {}
    for c in sorted(int(c) for c in class_ids):
        mask = label == c
        zs = torch.nonzero(mask.flatten(1).any(dim=1)).flatten()
        if zs.numel() == 0:
            continue
        z_mid = int(zs[zs.numel() // 2])
        x0, y0, x1, y1 = (int(v) for v in masks_to_boxes(mask[z_mid][None])[0])
        if rng is not None:
            shift = int(rng.randint(0, MAX_BOX_SHIFT, 1)[0])
            dx, dy = int(shift * w / 256), int(shift * h / 256)
            x0, x1 = max(0, x0 - dx), min(w - 1, x1 + dx)
            y0, y1 = max(0, y0 - dy), min(h - 1, y1 + dy)
        out[c] = {
            "z_min": int(zs[0]),
            "z_max": int(zs[-1]),
            "z_mid": z_mid,
            "z_mid_x_min": x0,
            "z_mid_y_min": y0,
            "z_mid_x_max": x1,
            "z_mid_y_max": y1,
        }
    return out


def mask_box(mask: Tensor) -> Tensor | None:
    """The tight box ``(d0, h0, w0, d1, h1, w1)`` (corners inclusive) of a mask ``[D, H, W]``.

    SegVol's box prompt; unlike the original (``utils/monai_inferers_utils.py``), an empty mask
    gives no box instead of the sentinel ``[-1] * 6`` that the network would embed as a real one.

    Returns:
        Float ``[6]``, or None when the mask is empty.
    """
    found = torch.nonzero(mask)
    if found.numel() == 0:
        return None
    return torch.cat([found.min(0).values, found.max(0).values]).float()
