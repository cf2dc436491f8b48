"""Anatomical-embedding files: one HDF5 file per volume, ``<case_id>.h5``.

Layout (written by ``segfm predict`` with the anatomical-embedding method, read by
``segfm track`` and ``segfm register``)::

    fine        float16 [C, d, h, w]      L2-normalised local embeddings (stride ``fine_stride``)
    coarse      float16 [C, d', h', w']   L2-normalised global embeddings (``coarse_stride``)
    semantic    float16 [C, d, h, w]      optional, SAM++ semantic head (``semantic_stride``)
    image       float32 [D, H, W]         optional, the preprocessed image the network saw

    attrs:
      format          "segfm-embeddings", version 1
      case_id, source the volume's name and the file it was read from
      image_shape     (D, H, W) of the image the network saw
      spacing         (z, y, x) voxel size in mm of that image grid
      affine          4x4: array index (z, y, x, 1) of that image grid -> world (X, Y, Z, 1) mm
      world           "RAS+": the world of ``affine`` (NIfTI's scanner space)
      <name>_stride   (z, y, x) stride of each stored embedding on the image grid

World convention of ``affine``: NIfTI's (and nibabel's) RAS+ scanner space, +X towards the
patient's Right, +Y Anterior, +Z Superior. DICOM/ITK's LPS+ world is the same point with X and Y
negated. The image *grid* may be oriented any way (the preprocessing reorients to LPS+ voxel
axes, as the original); only the world coordinates are RAS+.

Axis order is segfm's ``(z, y, x)`` for every array and every per-axis attribute; the original
SAM code permuted arrays to ``(y, x, z)`` and pickled ``[fine, coarse, sem, img, name]``. The
``affine`` is the NIfTI affine of the image grid with its three index columns reversed
(:func:`nifti_affine` gives the file's ``(x, y, z)``-index form back), so world points computed
from it agree with nibabel and every NIfTI viewer.

Embedding voxel ``i`` at stride ``s`` summarises image voxels ``[i*s, (i+1)*s)``; its centre lies
at image index ``i*s + (s-1)/2`` (the ``align_corners=False`` convention of trilinear
upsampling). Grids are ``ceil(image_shape / stride)`` long (``floor`` accepted too).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from segfm.data.io.atomic import atomic_path, reported_write
from segfm.errors import DataError

FORMAT = "segfm-embeddings"
VERSION = 1
#: the embeddings a file may hold, in this order; ``fine`` and ``coarse`` are required
EMBEDDING_NAMES = ("fine", "coarse", "semantic")
#: strides of the released networks on the image grid, (z, y, x)
DEFAULT_STRIDES: dict[str, tuple[int, int, int]] = {
    "fine": (2, 2, 2),
    "coarse": (4, 16, 16),
    "semantic": (2, 2, 2),
}
#: the world space of the ``affine`` attribute
WORLD = "RAS+"

_ZYX_XYZ = [2, 1, 0, 3]


def nifti_affine(affine_zyx: np.ndarray) -> np.ndarray:
    """Convert between an ``(z, y, x)``-index affine and a NIfTI ``(x, y, z)``-index affine.

    The conversion reverses the first three columns, so it is its own inverse.

    Args:
        affine_zyx: ``(4, 4)`` affine of either convention.

    Returns:
        float64 ``(4, 4)`` affine of the other convention.
    """
    return np.asarray(affine_zyx, dtype=np.float64)[:, _ZYX_XYZ]


@dataclass(frozen=True)
class EmbeddingVolume:
    """The embeddings of one volume and the grid of the image they were computed on.

    Attributes:
        fine: ``[C, d, h, w]`` local embeddings (float16 as stored).
        coarse: ``[C, d', h', w']`` global embeddings.
        spacing: ``(z, y, x)`` voxel size in mm of the image grid.
        affine: ``(4, 4)`` map of image index ``(z, y, x, 1)`` to RAS+ world mm.
        strides: ``(z, y, x)`` stride of each embedding on the image grid, by name.
        image_shape: ``(D, H, W)`` of the image grid.
        case_id: The volume's name.
        source: The file the image was read from ("" if unknown).
        semantic: ``[C, d, h, w]`` SAM++ semantic embeddings, or None.
        image: ``[D, H, W]`` preprocessed image, or None.
    """

    fine: np.ndarray
    coarse: np.ndarray
    spacing: tuple[float, float, float]
    affine: np.ndarray
    strides: dict[str, tuple[int, int, int]]
    image_shape: tuple[int, int, int]
    case_id: str
    source: str = ""
    semantic: np.ndarray | None = None
    image: np.ndarray | None = field(default=None, repr=False)

    @property
    def embeddings(self) -> dict[str, np.ndarray]:
        """The stored embeddings by name (``fine``, ``coarse`` and, if present, ``semantic``)."""
        out = {"fine": self.fine, "coarse": self.coarse}
        if self.semantic is not None:
            out["semantic"] = self.semantic
        return out

    def index_to_world(self, points_zyx: np.ndarray) -> np.ndarray:
        """World mm ``(X, Y, Z)`` of image-grid indices ``[N, 3]`` in ``(z, y, x)`` order."""
        p = np.asarray(points_zyx, dtype=np.float64).reshape(-1, 3)
        return p @ self.affine[:3, :3].T + self.affine[:3, 3]

    def world_to_index(self, points_xyz: np.ndarray) -> np.ndarray:
        """Image-grid indices ``(z, y, x)`` of world points ``[N, 3]`` in RAS+ mm."""
        p = np.asarray(points_xyz, dtype=np.float64).reshape(-1, 3)
        return np.linalg.solve(self.affine[:3, :3], (p - self.affine[:3, 3]).T).T


def _triple(value: Sequence[float] | np.ndarray, name: str, kind: type) -> tuple:
    arr = np.asarray(value, dtype=np.float64).reshape(-1)
    if arr.size != 3 or not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        msg = f"{name} must be three positive (z, y, x) numbers, got {value!r}"
        raise ValueError(msg)
    if kind is int and not np.all(arr == np.round(arr)):
        msg = f"{name} must be three integers, got {value!r}"
        raise ValueError(msg)
    return tuple(kind(v) for v in arr)


def _check_grid(
    name: str, shape: Sequence[int], stride: Sequence[int], image_shape: Sequence[int]
) -> str | None:
    for n, s, size in zip(shape, stride, image_shape, strict=True):
        if n not in (size // s, -(-size // s)):
            return (
                f"{name} grid {tuple(shape)} does not fit image_shape {tuple(image_shape)} at "
                f"stride {tuple(stride)} (expected ceil or floor of image_shape / stride)"
            )
    return None


def write_embeddings(
    path: str | os.PathLike[str],
    embeddings: Mapping[str, np.ndarray],
    spacing: Sequence[float],
    affine: np.ndarray,
    strides: Mapping[str, Sequence[int]] | None,
    image_shape: Sequence[int],
    case_id: str | None = None,
    source: str = "",
    image: np.ndarray | None = None,
    compression: str | None = "gzip",
) -> None:
    """Write the embeddings of one volume atomically (see the module docstring for the layout).

    Args:
        path: Destination ``<case_id>.h5``.
        embeddings: ``fine`` and ``coarse`` (required) and ``semantic`` (optional) arrays
            ``[C, d, h, w]`` (numpy; stored as float16).
        spacing: ``(z, y, x)`` voxel size in mm of the image grid the network saw.
        affine: ``(4, 4)`` map of that grid's index ``(z, y, x, 1)`` to RAS+ world mm
            (:func:`nifti_affine` converts a NIfTI affine).
        strides: ``(z, y, x)`` stride of each embedding by name; None or missing names take
            :data:`DEFAULT_STRIDES`.
        image_shape: ``(D, H, W)`` of the image grid.
        case_id: The volume's name; defaults to the file name without ``.h5``.
        source: The file the image was read from.
        image: Optional preprocessed image ``[D, H, W]`` (stored as float32).
        compression: h5py compression of the datasets (``None`` for none).

    Raises:
        ValueError: If a required embedding is missing, an unknown one is given, or shapes,
            spacing, affine or strides are inconsistent.
        DataError: If the file cannot be written.
    """
    path = Path(path)
    missing = [n for n in ("fine", "coarse") if n not in embeddings]
    unknown = sorted(set(embeddings) - set(EMBEDDING_NAMES))
    if missing or unknown:
        msg = f"embeddings need fine and coarse (missing {missing}); unknown names {unknown}"
        raise ValueError(msg)
    spacing_t = _triple(spacing, "spacing", float)
    shape_t = _triple(image_shape, "image_shape", int)
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        msg = f"affine must be an invertible (4, 4) matrix, got {affine.tolist()}"
        raise ValueError(msg)
    all_strides = dict(DEFAULT_STRIDES) | {k: tuple(v) for k, v in (strides or {}).items()}
    for name, array in embeddings.items():
        stride = _triple(all_strides[name], f"{name} stride", int)
        all_strides[name] = stride
        if np.ndim(array) != 4:
            msg = f"{name} embeddings must be [C, d, h, w], got shape {np.shape(array)}"
            raise ValueError(msg)
        problem = _check_grid(name, np.shape(array)[1:], stride, shape_t)
        if problem:
            raise ValueError(problem)
    if image is not None and tuple(np.shape(image)) != shape_t:
        msg = f"image shape {np.shape(image)} differs from image_shape {shape_t}"
        raise ValueError(msg)
    name = case_id if case_id is not None else path.name.removesuffix(".h5")
    with reported_write(path), atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        for key, array in embeddings.items():
            data = np.ascontiguousarray(np.asarray(array, dtype=np.float16))
            f.create_dataset(key, data=data, compression=compression)
            f.attrs[f"{key}_stride"] = np.asarray(all_strides[key], dtype=np.int64)
        if image is not None:
            f.create_dataset("image", data=np.asarray(image, np.float32), compression=compression)
        f.attrs["format"] = FORMAT
        f.attrs["version"] = VERSION
        f.attrs["case_id"] = name
        f.attrs["source"] = str(source)
        f.attrs["image_shape"] = np.asarray(shape_t, dtype=np.int64)
        f.attrs["spacing"] = np.asarray(spacing_t, dtype=np.float64)
        f.attrs["affine"] = affine
        f.attrs["world"] = WORLD


def _bad(path: Path, reason: str) -> DataError:
    return DataError(
        f"{path} is not a valid embedding file ({reason}); write it again with "
        "segfm predict (anatomical embedding export) or segfm.data.io.embeddings_h5"
    )


def read_embeddings(path: str | os.PathLike[str], load_image: bool = True) -> EmbeddingVolume:
    """Read an embedding file written by :func:`write_embeddings`.

    Args:
        path: The ``<case_id>.h5`` file.
        load_image: Also read the stored image, if any.

    Returns:
        The embeddings (float16 as stored) and their grid.

    Raises:
        DataError: If the file is missing, not HDF5, or lacks or mis-sizes a required entry.
    """
    path = Path(path)
    if not path.is_file():
        msg = f"{path} does not exist; compute the embeddings first (segfm predict)"
        raise DataError(msg)
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("format") != FORMAT:
                raise _bad(path, f"format attribute {f.attrs.get('format')!r}, not {FORMAT!r}")
            for key in ("fine", "coarse", "image_shape", "spacing", "affine"):
                if key not in f and key not in f.attrs:
                    raise _bad(path, f"no {key!r}")
            arrays = {k: f[k][()] for k in EMBEDDING_NAMES if k in f}
            strides = {
                k: tuple(int(v) for v in f.attrs.get(f"{k}_stride", DEFAULT_STRIDES[k]))
                for k in arrays
            }
            image = f["image"][()] if load_image and "image" in f else None
            attrs = {k: f.attrs[k] for k in ("image_shape", "spacing", "affine")}
            case_id = str(f.attrs.get("case_id", path.name.removesuffix(".h5")))
            source = str(f.attrs.get("source", ""))
    except DataError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as e:
        raise _bad(path, str(e).splitlines()[0] if str(e) else type(e).__name__) from e
    image_shape = tuple(int(v) for v in attrs["image_shape"])
    affine = np.asarray(attrs["affine"], dtype=np.float64)
    if len(image_shape) != 3 or affine.shape != (4, 4):
        raise _bad(path, f"image_shape {image_shape} / affine shape {affine.shape}")
    for key, array in arrays.items():
        problem = array.ndim == 4 and _check_grid(key, array.shape[1:], strides[key], image_shape)
        if array.ndim != 4 or problem:
            raise _bad(path, problem or f"{key} has shape {array.shape}, not [C, d, h, w]")
    return EmbeddingVolume(
        fine=arrays["fine"],
        coarse=arrays["coarse"],
        spacing=tuple(float(v) for v in attrs["spacing"]),
        affine=affine,
        strides=strides,
        image_shape=image_shape,
        case_id=case_id,
        source=source,
        semantic=arrays.get("semantic"),
        image=image,
    )
