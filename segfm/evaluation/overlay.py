"""Overlay pictures of predictions: reference and prediction side by side on the image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

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


def _to_gray_rgb(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image, dtype=np.float32)
    lo, hi = float(img.min()), float(img.max())
    img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
    return np.repeat((img * 255.0)[..., None], 3, axis=-1)


def _paint(rgb: np.ndarray, labels: np.ndarray, alpha: float) -> np.ndarray:
    out = rgb.copy()
    for c in np.unique(labels):
        if c == 0:
            continue
        m = labels == c
        colour = PALETTE[(int(c) - 1) % len(PALETTE)]
        out[m] = (1 - alpha) * out[m] + alpha * colour
        edge = m & ~_erode(m)
        out[edge] = colour
    return out


def _erode(mask: np.ndarray) -> np.ndarray:
    inner = mask.copy()
    inner[1:, :] &= mask[:-1, :]
    inner[:-1, :] &= mask[1:, :]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return inner


def overlay(
    image: np.ndarray,
    prediction: np.ndarray,
    reference: np.ndarray | None = None,
    alpha: float = 0.4,
) -> np.ndarray:
    """Paint label maps over a grey image.

    Args:
        image: 2D image ``[H, W]`` of any range.
        prediction: Predicted label map ``[H, W]``.
        reference: Optional reference label map ``[H, W]``, drawn on the left.
        alpha: Opacity of the filled regions.

    Returns:
        RGB ``uint8`` picture ``[H, W, 3]``, or ``[H, 2W + 4, 3]`` with the reference on the left.
    """
    if image.ndim != 2 or prediction.shape != image.shape:
        msg = f"need a 2D image and prediction of one shape: {image.shape}, {prediction.shape}"
        raise ValueError(msg)
    rgb = _to_gray_rgb(image)
    panels = [_paint(rgb, prediction, alpha)]
    if reference is not None:
        gap = np.full((image.shape[0], 4, 3), 255.0, dtype=np.float32)
        panels = [_paint(rgb, reference, alpha), gap, *panels]
    return np.clip(np.concatenate(panels, axis=1), 0, 255).astype(np.uint8)


def save_png(picture: np.ndarray, path: str | Path) -> Path:
    """Write an RGB ``uint8`` picture as PNG, atomically.

    Returns:
        The path written.
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(picture).save(tmp, format="PNG")
    return path
