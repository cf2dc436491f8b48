"""The array steps of MedSAM's CT/MR preprocessing (used by :mod:`data_tools.pre_ct_mr`).

Each function takes and returns numpy arrays in ``(Z, Y, X)`` (volumes) or ``(Y, X)`` (slices)
order and reproduces one step of MedSAM's ``pre_CT_MR.py``:

* intensities to uint8: :func:`segfm.transforms.intensity.window_ct` /
  :func:`~segfm.transforms.intensity.normalize_mr` (also used by ``segfm serve``).
* :func:`remap_labels` then :func:`remove_small_objects`: ``cc3d.dust`` in 3D (26-connectivity),
  then on every slice in 2D (8-connectivity), with :func:`scipy.ndimage.label`.
* :func:`resize_image_slice` / :func:`resize_label_slice`: a slice to the network's square input.
  Pillow's bicubic filter (which widens its kernel when shrinking, i.e. anti-aliases) stands in for
  scikit-image's ``resize(order=3, anti_aliasing=True)``; values differ from the original's by a
  few hundredths of the [0, 1] range, not more.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage

_STRUCTURE_3D = np.ones((3, 3, 3), dtype=bool)  # 26-connectivity
_STRUCTURE_2D = np.zeros((3, 3, 3), dtype=bool)  # 8-connectivity within a slice, none across
_STRUCTURE_2D[1] = True


def parse_remap(text: str) -> dict[int, int]:
    """Parse a label remapping such as ``"12:0,13:1"``.

    Args:
        text: Comma-separated ``old:new`` pairs of non-negative integers.

    Returns:
        Old id to new id.

    Raises:
        ValueError: If a pair is malformed or an id repeats.
    """
    mapping: dict[int, int] = {}
    for pair in filter(None, (p.strip() for p in text.split(","))):
        old, sep, new = pair.partition(":")
        if not sep or not old.strip().isdigit() or not new.strip().isdigit():
            msg = f"remap entry {pair!r} is not old:new with non-negative integers (e.g. 12:0)"
            raise ValueError(msg)
        if int(old) in mapping:
            msg = f"remap maps label {int(old)} twice in {text!r}"
            raise ValueError(msg)
        mapping[int(old)] = int(new)
    return mapping


def remap_labels(label: np.ndarray, mapping: dict[int, int]) -> np.ndarray:
    """Replace label ids at once (``{12: 0, 13: 12}`` moves 13 to 12 and drops the old 12).

    Args:
        label: Non-negative integer labels, any shape.
        mapping: Old id to new id; ids not in it are kept.

    Returns:
        The remapped labels, same dtype (widened if a new id needs it).
    """
    if not mapping or label.size == 0:
        return label.copy()
    lut = np.arange(max(int(label.max()), *mapping) + 1, dtype=np.int64)
    for old, new in mapping.items():
        lut[old] = new
    out = lut[label]
    return out.astype(np.result_type(label.dtype, np.min_scalar_type(int(lut.max()))))


def _dust(label: np.ndarray, min_size: int, structure: np.ndarray) -> np.ndarray:
    """Zero the connected components of each label id that have fewer than ``min_size`` voxels."""
    out = label.copy()
    if min_size <= 1:
        return out
    for index, box in enumerate(ndimage.find_objects(label), start=1):
        if box is None:
            continue
        components, _ = ndimage.label(label[box] == index, structure)
        small = np.bincount(components.ravel()) < min_size
        small[0] = False
        out[box][small[components]] = 0
    return out


def remove_small_objects(label: np.ndarray, min_size_3d: int, min_size_2d: int) -> np.ndarray:
    """Remove small objects like MedSAM: first in 3D, then slice by slice in 2D.

    Args:
        label: Non-negative integer labels ``[Z, Y, X]``.
        min_size_3d: Components (26-connected, per label id) with fewer voxels are set to 0;
            0 or 1 keeps all.
        min_size_2d: Then, on every slice, components (8-connected) with fewer pixels are set to
            0; 0 or 1 keeps all.

    Returns:
        The cleaned labels (a new array).
    """
    return _dust(_dust(label, min_size_3d, _STRUCTURE_3D), min_size_2d, _STRUCTURE_2D)


def resize_image_slice(image: np.ndarray, size: int, dtype: str = "float32") -> np.ndarray:
    """Turn a uint8 slice into MedSAM's network input.

    Args:
        image: uint8 slice ``[Y, X]``.
        size: Output side ``S``.
        dtype: ``"float32"``, or ``"float64"`` for the original's exact type.

    Returns:
        ``[S, S, 3]``: bicubic anti-aliased resize, min-max scaled to [0, 1] over the slice, the
        grey level repeated in three channels.
    """
    resized = Image.fromarray(image.astype(np.float32)).resize(
        (size, size), Image.Resampling.BICUBIC
    )
    out = np.asarray(resized, dtype=np.float64)  # [S, S]
    out = (out - out.min()) / max(out.max() - out.min(), 1e-8)
    return np.repeat(out.astype(dtype)[:, :, None], 3, axis=2)  # [S, S, 3]


def resize_label_slice(label: np.ndarray, size: int) -> np.ndarray:
    """Resize a label slice with nearest-neighbour sampling (pixel centres).

    Args:
        label: Integer slice ``[Y, X]`` with ids below 2**31.
        size: Output side ``S``.

    Returns:
        ``[S, S]`` with the dtype of ``label``.
    """
    resized = Image.fromarray(label.astype(np.int32)).resize((size, size), Image.Resampling.NEAREST)
    return np.asarray(resized).astype(label.dtype)
