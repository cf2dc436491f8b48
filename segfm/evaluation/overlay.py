"""Overlay pictures: reference and prediction side by side on the image, labelled.

One picture per case: a title line (the case and its score), the panels ``reference`` and
``prediction`` (the slice upscaled with nearest neighbour to at least ``min_width`` pixels, the
classes filled and outlined in their colours), and a legend of the classes shown.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from segfm.utils.files import atomic_path

# Distinct colours for class ids 1, 2, ... (cycled).
PALETTE = np.array(
    [
        [230, 25, 75],
        [60, 180, 75],
        [255, 225, 25],
        [0, 130, 200],
        [245, 130, 48],
        [145, 30, 180],
        [70, 240, 240],
        [240, 50, 230],
        [210, 245, 60],
        [250, 190, 212],
    ],
    dtype=np.float32,
)
#: pixels between panels and around the text
GAP = 8
#: height of a line of text (Pillow's default bitmap font is 11 px high)
LINE = 16
WHITE = (255, 255, 255)
BLACK = (0, 0, 0)


def colour(class_id: int) -> tuple[int, int, int]:
    """The colour of a class id in every overlay."""
    r, g, b = PALETTE[(int(class_id) - 1) % len(PALETTE)]
    return int(r), int(g), int(b)


def _to_gray_rgb(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image, dtype=np.float32)
    lo, hi = float(img.min()), float(img.max())
    img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
    return np.repeat((img * 255.0)[..., None], 3, axis=-1)


def _erode(mask: np.ndarray) -> np.ndarray:
    inner = mask.copy()
    inner[1:, :] &= mask[:-1, :]
    inner[:-1, :] &= mask[1:, :]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return inner


def _paint(rgb: np.ndarray, labels: np.ndarray, alpha: float) -> np.ndarray:
    out = rgb.copy()
    for c in np.unique(labels):
        if c == 0:
            continue
        m = labels == c
        paint = np.asarray(colour(int(c)), dtype=np.float32)
        out[m] = (1 - alpha) * out[m] + alpha * paint
        out[m & ~_erode(m)] = paint
    return out


def _upscale(array: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour upscaling of ``[H, W, ...]`` by an integer factor."""
    return np.repeat(np.repeat(array, factor, axis=0), factor, axis=1)


def overlay(
    image: np.ndarray,
    prediction: np.ndarray,
    reference: np.ndarray | None = None,
    class_names: Mapping[int, str] | None = None,
    title: str = "",
    alpha: float = 0.4,
    min_width: int = 512,
) -> np.ndarray:
    """Paint label maps over a grey slice, with panel labels, a legend and a title.

    Args:
        image: 2D slice ``[H, W]`` of any range.
        prediction: Predicted label map ``[H, W]``.
        reference: Reference label map ``[H, W]``, drawn on the left; None for prediction only.
        class_names: Name per class id for the legend (the id where missing).
        title: The line above the panels (e.g. the case id and its DSC).
        alpha: Opacity of the filled regions.
        min_width: Least width of a panel; the slice is upscaled by the smallest integer factor
            reaching it (nearest neighbour, so voxels stay visible).

    Returns:
        RGB ``uint8`` picture.
    """
    if image.ndim != 2 or prediction.shape != image.shape:
        msg = f"need a 2D image and prediction of one shape: {image.shape}, {prediction.shape}"
        raise ValueError(msg)
    if reference is not None and reference.shape != image.shape:
        msg = f"reference shape {reference.shape} differs from the image's {image.shape}"
        raise ValueError(msg)
    factor = max(1, math.ceil(min_width / image.shape[1]))
    rgb = _to_gray_rgb(image)
    panels = [("prediction", prediction)]
    if reference is not None:
        panels.insert(0, ("reference", reference))
    pictures = [
        np.clip(_upscale(_paint(rgb, np.asarray(labels), alpha), factor), 0, 255).astype(np.uint8)
        for _, labels in panels
    ]
    h, w = pictures[0].shape[:2]
    present = sorted({int(c) for _, labels in panels for c in np.unique(labels) if c != 0})
    names = dict(class_names or {})
    entries = [(c, f"{c} {names.get(c, '')}".strip()) for c in present]
    width = len(pictures) * w + (len(pictures) + 1) * GAP
    per_row = max(1, (width - GAP) // 160)
    legend_rows = math.ceil(len(entries) / per_row)
    top = GAP + LINE + GAP + LINE  # title, then the panel labels
    height = top + h + GAP + legend_rows * LINE + GAP
    canvas = Image.new("RGB", (width, height), WHITE)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    draw.text((GAP, GAP), title, fill=BLACK, font=font)
    for k, ((name, _), picture) in enumerate(zip(panels, pictures, strict=True)):
        x = GAP + k * (w + GAP)
        draw.text((x, GAP + LINE + GAP), name, fill=BLACK, font=font)
        canvas.paste(Image.fromarray(picture), (x, top))
    for k, (c, text) in enumerate(entries):
        x = GAP + (k % per_row) * 160
        y = top + h + GAP + (k // per_row) * LINE
        draw.rectangle((x, y + 1, x + 10, y + 11), fill=colour(c))
        draw.text((x + 14, y), text[:22], fill=BLACK, font=font)
    return np.asarray(canvas)


def save_png(picture: np.ndarray, path: str | Path) -> Path:
    """Write an RGB ``uint8`` picture as PNG, atomically.

    Returns:
        The path written.
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(picture).save(tmp, format="PNG")
    return path
