"""A stand-in for the network: multi-scale patch features of the image, L2-normalised."""

import numpy as np
from scipy import ndimage


def _patch_features(image, sigma, offset, stride):
    smooth = ndimage.gaussian_filter(image.astype(np.float32), sigma)
    shifts = [-offset, 0, offset]
    chans = [
        np.roll(smooth, (a, b, c), axis=(0, 1, 2)) for a in shifts for b in shifts for c in shifts
    ]
    f = np.stack(chans)
    f = f - f.mean(axis=0, keepdims=True)
    f = _pool(f, stride)  # block means: node i is centred at voxel i*s + (s-1)/2, as the network
    return f / np.maximum(np.linalg.norm(f, axis=0, keepdims=True), 1e-6)


def _pool(f, stride):
    pads = [(0, 0)] + [(0, (-n) % s) for n, s in zip(f.shape[1:], stride, strict=True)]
    f = np.pad(f, pads, mode="edge")
    c, d, h, w = f.shape
    sz, sy, sx = stride
    return f.reshape(c, d // sz, sz, h // sy, sy, w // sx, sx).mean(axis=(2, 4, 6))


def embed(image):
    """{fine, coarse} like the network's: stride 2 and (4, 16, 16), unit norm."""
    fine = _patch_features(image, 1.0, 2, (2, 2, 2))
    # a flat coarse map (similarity 1 everywhere): the network's global embedding is trained to
    # vary smoothly with position, a pooled patch descriptor would only add a bias here
    shape = [-(-n // s) for n, s in zip(image.shape, (4, 16, 16), strict=True)]
    coarse = np.ones((4, *shape), np.float32) / 2
    return {"fine": fine, "coarse": coarse}


def textured_volume(shape=(40, 40, 40), seed=0):
    """Smoothed noise inside a body-like ellipsoid, CT-like values (air -1000 outside)."""
    rng = np.random.default_rng(seed)
    tex = ndimage.gaussian_filter(rng.standard_normal(shape), 1.5)
    tex = tex / tex.std() * 200
    zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    body = (zz / 0.95) ** 2 + (yy / 0.8) ** 2 + (xx / 0.9) ** 2 < 1
    return np.where(body, tex, -1000.0).astype(np.float32)
