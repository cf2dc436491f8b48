"""Embedding-based registration of two volumes: resample, embed, match, fit, warp (and deeds).

The library layer behind ``segfm register`` (:mod:`segfm.tracking.register_files` reads and
writes the files): it takes an ``embed`` callable, so a trained network, or any function mapping
an image to L2-normalised feature maps, can drive it.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from scipy import ndimage

from segfm.data.io.embeddings_h5 import DEFAULT_STRIDES, EmbeddingVolume, nifti_affine
from segfm.data.io.geometry import isotropic_grid, resample
from segfm.data.io.nifti import Volume, write_nifti
from segfm.errors import DataError
from segfm.tracking.deeds import (
    DEEDS_ARGS,
    finest_step,
    read_displacements,
    run_deeds,
    upsample_displacements,
)
from segfm.tracking.grid_matches import grid_matches
from segfm.tracking.matching import match_space
from segfm.tracking.resample import Displacement, warp
from segfm.tracking.robust import clip_rotation, ransac

#: image [D, H, W] (normalised, on the isotropic grid) -> {"fine", "coarse", ("semantic")}
Embed = Callable[[np.ndarray], dict[str, np.ndarray]]
Modality = Literal["ct", "mr"]
CT_RANGE = (-1024.0, 3071.0)


def normalise_intensity(array: np.ndarray, modality: Modality) -> np.ndarray:
    """Normalise intensities as the spec: clip, map to [0, 255], shift by -50.

    CT is clipped to HU [-1024, 3071], MR to its p0.2/p99.8 percentiles.

    Args:
        array: Raw intensities.
        modality: ``ct`` or ``mr``.

    Returns:
        float32 array in ``[-50, 205]``.
    """
    a = np.asarray(array, dtype=np.float32)
    lo, hi = CT_RANGE if modality == "ct" else np.percentile(a, [0.2, 99.8])
    scaled = (np.clip(a, lo, hi) - lo) / max(float(hi - lo), 1e-6) * 255.0
    return (scaled - 50.0).astype(np.float32)


@dataclass(frozen=True)
class Grid:
    """An image on a grid: ``array`` ``[Z, Y, X]`` and its ``(z, y, x)``-index ``affine``."""

    array: np.ndarray
    affine: np.ndarray


def to_isotropic(volume: Volume, spacing: float, modality: Modality) -> Grid:
    """Resample a NIfTI volume to ``spacing`` mm cubes (trilinear) and normalise intensities."""
    affine, shape = isotropic_grid(volume.affine, volume.array.shape, spacing)
    raw = np.asarray(volume.array, dtype=np.float32)
    iso = resample(raw, volume.affine, affine, shape, order=1, outside=float(raw.min()))
    return Grid(normalise_intensity(iso, modality), nifti_affine(affine))


@dataclass
class Registration:
    """The outcome of :func:`register_volumes`.

    Attributes:
        transform: ``(4, 4)`` fixed world mm -> moving world mm (RAS+).
        moved: The moving image resampled onto the fixed grid.
        fixed_points: ``[N, 3]`` world mm of the matches used in the fixed image.
        moving_points: ``[N, 3]`` their matches in the moving image.
        inliers: ``[N]`` boolean inliers of the robust fit.
        candidates: Grid points tried.
        moved_deeds: The moving image after deedsBCV refinement, when run.
        displacement: deedsBCV's field as used, when run.
    """

    transform: np.ndarray
    moved: np.ndarray
    fixed_points: np.ndarray
    moving_points: np.ndarray
    inliers: np.ndarray
    candidates: int
    moved_deeds: np.ndarray | None = None
    displacement: Displacement | None = field(default=None, repr=False)


def _embeddings(grid: Grid, embed: Embed) -> EmbeddingVolume:
    arrays = embed(grid.array)
    spacing = tuple(float(v) for v in np.linalg.norm(grid.affine[:3, :3], axis=0))
    return EmbeddingVolume(
        fine=arrays["fine"],
        coarse=arrays["coarse"],
        spacing=spacing,
        affine=grid.affine,
        strides=dict(DEFAULT_STRIDES),
        image_shape=tuple(grid.array.shape),
        case_id="",
        semantic=arrays.get("semantic"),
    )


def _world(points: np.ndarray, affine: np.ndarray) -> np.ndarray:
    return points @ affine[:3, :3].T + affine[:3, 3]


def register_volumes(
    fixed: Volume,
    moving: Volume,
    embed: Embed,
    transform: Literal["rigid", "affine"] = "affine",
    modalities: tuple[Modality, Modality] = ("ct", "ct"),
    spacing: float = 2.0,
    step: int = 4,
    threshold: float = 0.5,
    max_rotation: float = 0.2,
    ransac_threshold: float = 4.0,
    deeds: str | None = None,
    deeds_args: str = DEEDS_ARGS,
    workdir: Path | None = None,
) -> Registration:
    """Register ``moving`` to ``fixed`` with embedding matches (see ``segfm register``).

    Args:
        fixed: The fixed volume (read with :func:`segfm.data.io.nifti.read_nifti`).
        moving: The moving volume.
        embed: Maps a normalised isotropic image ``[D, H, W]`` to its embeddings.
        transform: ``rigid`` (Kabsch, rotation limited to ``max_rotation``) or ``affine``.
        modalities: Intensity normalisation of (fixed, moving).
        spacing: Isotropic spacing in mm the images are embedded at.
        step: Grid spacing of the matched fixed points, in fine nodes.
        threshold: Smallest averaged similarity of a kept match (in [-1, 1]).
        max_rotation: Largest rotation of a rigid fit, in radians (the original: 0.2).
        ransac_threshold: Largest residual of an inlier, in mm.
        deeds: deedsBCV executable for deformable refinement (None: skip).
        deeds_args: deedsBCV options; the last ``-G`` value is its finest grid step.
        workdir: Folder for deedsBCV's files (default: a temporary folder).

    Returns:
        The transform, the warped image(s) and the matches.

    Raises:
        DataError: If too few reliable matches are found.
    """
    fixed_iso = to_isotropic(fixed, spacing, modalities[0])
    moving_iso = to_isotropic(moving, spacing, modalities[1])
    space_f = match_space(_embeddings(fixed_iso, embed))
    space_m = match_space(_embeddings(moving_iso, embed))
    body = fixed_iso.array > fixed_iso.array.min() + 5
    body = ndimage.binary_fill_holes(body) if body.any() else None
    found = grid_matches(space_f, space_m, (step, step, step), body, threshold)
    minimum = 4 if transform == "affine" else 3
    if len(found.fixed) < minimum:
        msg = (
            f"only {len(found.fixed)} of {found.candidates} grid points matched reliably (need "
            f"{minimum}); lower --threshold ({threshold}) or --step ({step}), or check that the "
            "images overlap and that --fixed_modality / --moving_modality are right"
        )
        raise DataError(msg)
    src, dst = _world(found.fixed, fixed_iso.affine), _world(found.moving, moving_iso.affine)
    matrix, inliers = ransac(src, dst, transform, ransac_threshold)
    if transform == "rigid":
        matrix = clip_rotation(matrix, max_rotation, src[inliers].mean(axis=0))
    fixed_affine, moving_affine = nifti_affine(fixed.affine), nifti_affine(moving.affine)
    moved = warp(moving.array, moving_affine, fixed_affine, fixed.array.shape, matrix)
    result = Registration(matrix, moved, src, dst, inliers, found.candidates)
    if deeds is not None:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(workdir) if workdir is not None else Path(tmp)
            field_ = _deeds_field(fixed_iso, moving_iso, matrix, deeds, deeds_args, folder)
        result.displacement = field_
        result.moved_deeds = warp(
            moving.array, moving_affine, fixed_affine, fixed.array.shape, matrix, field_
        )
    return result


def _deeds_field(
    fixed: Grid, moving: Grid, matrix: np.ndarray, binary: str, args: str, folder: Path
) -> Displacement:
    """Run deedsBCV on the fixed grid padded to a multiple of its step; return its field."""
    step = finest_step(args)
    shape = tuple(-(-n // step) * step for n in fixed.array.shape)
    fill = float(fixed.array.min())
    padded = np.full(shape, fill, dtype=np.float32)
    padded[tuple(slice(0, n) for n in fixed.array.shape)] = fixed.array
    moved = warp(moving.array, moving.affine, fixed.affine, shape, matrix)
    folder.mkdir(parents=True, exist_ok=True)
    fixed_path, moving_path = folder / "fixed_deeds.nii.gz", folder / "moving_deeds.nii.gz"
    write_nifti(fixed_path, padded, nifti_affine(fixed.affine))
    write_nifti(moving_path, moved, nifti_affine(fixed.affine))
    dat = run_deeds(binary, fixed_path, moving_path, folder / "deeds", args)
    coarse = read_displacements(dat, shape, step)
    return Displacement(upsample_displacements(coarse, shape), fixed.affine)
