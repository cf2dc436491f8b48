"""Files a person loads on the web page, and the mask they download.

The page loads a NIfTI file (``.nii`` / ``.nii.gz``), a CVPR 2025 npz case (``imgs`` and
``spacing``) or a plain ``.npy`` volume. A NIfTI upload is written into the run folder's
``uploads/`` and read with :func:`segfm.data.io.nifti.read_nifti` (every check of the readers
applies; the file is removed once read), so the mask downloads as NIfTI with the image's own
affine. Arrays are ``(Z, Y, X)`` throughout.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np

from segfm.data.io.nifti import read_nifti, write_nifti
from segfm.errors import DataError
from segfm.serve.codec import read_npy
from segfm.serve.errors import RequestError
from segfm.serve.session import affine_from_spacing

#: file endings the page loads
SUFFIXES = (".nii.gz", ".nii", ".npz", ".npy")


def _npz(data: bytes, name: str, max_voxels: int) -> tuple[np.ndarray, list[float] | None]:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = {info.filename: info for info in archive.infolist()}
    except zipfile.BadZipFile as e:
        msg = f"{name} is not an npz file ({e}); save it with numpy.savez_compressed"
        raise RequestError(msg) from e
    if "imgs.npy" not in members:
        msg = f"{name} has no 'imgs' (keys: {sorted(k[:-4] for k in members)}); as CVPR 2025 npz"
        raise RequestError(msg)
    if members["imgs.npy"].file_size > max_voxels * 8 + 4096:
        msg = f"{name}: 'imgs' is over this server's limit of {max_voxels:,} voxels"
        raise RequestError(msg, status=413)
    image = read_npy(archive.read("imgs.npy"), f"{name}: 'imgs'", max_voxels)
    spacing = None
    if "spacing.npy" in members and members["spacing.npy"].file_size < 4096:
        raw = np.load(io.BytesIO(archive.read("spacing.npy")), allow_pickle=False)
        values = [float(v) for v in np.asarray(raw).ravel()]
        if len(values) == 3 and all(np.isfinite(values)) and min(values) > 0:
            spacing = values
    return image, spacing


def read_upload(
    data: bytes, name: str, folder: Path, max_voxels: int
) -> tuple[np.ndarray, list[float] | None, np.ndarray | None]:
    """The volume, its spacing ``(z, y, x)`` and NIfTI affine (None where the file has none).

    Args:
        data: The file's bytes.
        name: Its name (the ending decides the format).
        folder: Where a NIfTI file is put to be read (the run folder's ``uploads/``).
        max_voxels: Largest volume accepted.

    Raises:
        RequestError: If the file is not a readable 3D volume of a known format.
    """
    lower = name.lower()
    if lower.endswith(".npz"):
        image, spacing = _npz(data, name, max_voxels)
        return image, spacing, None
    if lower.endswith(".npy"):
        return read_npy(data, name, max_voxels), None, None
    if not lower.endswith((".nii", ".nii.gz")):
        msg = f"cannot load {name!r}; load a {', '.join(SUFFIXES)} file"
        raise RequestError(msg)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ("upload.nii.gz" if lower.endswith(".gz") else "upload.nii")
    path.write_bytes(data)
    try:
        volume = read_nifti(path)
    except DataError as e:
        raise RequestError(str(e).replace(str(path), name)) from e
    finally:
        path.unlink(missing_ok=True)
    if volume.array.size > max_voxels:
        msg = f"{name} has {volume.array.size:,} voxels, over this server's limit {max_voxels:,}"
        raise RequestError(msg, status=413)
    return volume.array, list(volume.spacing), volume.affine


def display_volume(model_input: np.ndarray) -> np.ndarray:
    """uint8 grey values for the page: the 0.5 / 99.5 percentiles of the model's input."""
    flat = model_input.reshape(-1)
    sample = flat[:: max(1, flat.size // 1_000_000)]  # percentiles of at most ~1M voxels
    low, high = np.percentile(sample, [0.5, 99.5])
    if high <= low:
        high = low + 1.0
    scaled = (np.clip(model_input, low, high) - low) / (high - low) * 255.0
    return np.rint(scaled).astype(np.uint8)


def mask_nifti(mask: np.ndarray, affine: np.ndarray, folder: Path) -> bytes:
    """The mask as ``.nii.gz`` bytes with ``affine`` (written in ``folder``, then removed)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "mask.nii.gz"
    write_nifti(path, mask.astype(np.uint8), affine)
    try:
        return path.read_bytes()
    finally:
        path.unlink(missing_ok=True)


__all__ = ["SUFFIXES", "affine_from_spacing", "display_volume", "mask_nifti", "read_upload"]
