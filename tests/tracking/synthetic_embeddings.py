"""Embeddings with known matches: random Fourier features of world position.

``features(x) = cos(W x + b)`` with ``W ~ N(0, 1/sigma²)``: the cosine similarity of two
points is close to ``exp(-|x - y|² / (2 sigma²))``, so the best match of a point is itself. A
"target" volume sees the anatomy moved by ``T`` (world mm), i.e. its embedding at ``y`` is the
source embedding of ``T⁻¹(y)``; the right match of a source point ``p`` is then ``T(p)``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from segfm.data.io.embeddings_h5 import DEFAULT_STRIDES, write_embeddings


def fourier_field(channels: int, sigma: float, seed: int):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((channels, 3)) / sigma
    b = rng.uniform(0, 2 * np.pi, channels)
    return lambda pts: np.cos(pts @ w.T + b)  # [N, 3] world -> [N, C]


def grid_world(affine_zyx, shape, stride):
    s = np.asarray(stride, float)
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, 3)
    centres = idx * s + (s - 1) / 2  # image-grid coordinates of node centres
    return centres @ affine_zyx[:3, :3].T + affine_zyx[:3, 3]


def embed(affine_zyx, image_shape, transform=None, seed=0, semantic=False):
    """Embeddings of a grid; ``transform`` (4x4, world) moves the anatomy (None: identity)."""
    inverse = np.eye(4) if transform is None else np.linalg.inv(transform)
    out = {}
    for name, sigma, channels in (("fine", 6.0, 256), ("coarse", 40.0, 64), ("semantic", 20.0, 64)):
        if name == "semantic" and not semantic:
            continue
        stride = DEFAULT_STRIDES[name]
        shape = [-(-n // s) for n, s in zip(image_shape, stride, strict=True)]
        world = grid_world(affine_zyx, shape, stride)
        world = world @ inverse[:3, :3].T + inverse[:3, 3]
        field = fourier_field(channels, sigma, seed + len(name))
        f = field(world).T.reshape(channels, *shape)
        out[name] = f / np.linalg.norm(f, axis=0, keepdims=True)
    return out


def write_case(folder: Path, name, affine_zyx, image_shape, transform=None, semantic=False):
    arrays = embed(affine_zyx, image_shape, transform, semantic=semantic)
    spacing = np.linalg.norm(affine_zyx[:3, :3], axis=0)
    path = Path(folder) / f"{name}.h5"
    write_embeddings(path, arrays, spacing, affine_zyx, None, image_shape, case_id=name)
    return path


def scale_shift(scale: float, shift) -> np.ndarray:
    t = np.eye(4)
    t[:3, :3] *= scale
    t[:3, 3] = shift
    return t
