"""``segfm register``: register two volumes with anatomical-embedding matches."""

from __future__ import annotations

from typing import Any, Literal

from segfm.tracking.deeds import DEEDS_ARGS


def register(
    fixed: str,
    moving: str,
    ckpt: str | None,
    out: str,
    transform: Literal["rigid", "affine"] = "affine",
    deeds: str | None = None,
    arch: str = "sam",
    fixed_modality: Literal["ct", "mr"] = "ct",
    moving_modality: Literal["ct", "mr"] = "mr",
    spacing: float = 2.0,
    step: int = 4,
    threshold: float = 0.5,
    max_rotation: float = 0.2,
    ransac_threshold: float = 4.0,
    deeds_args: str = DEEDS_ARGS,
    device: str = "cpu",
) -> dict[str, Any]:
    """Register a moving volume to a fixed one with anatomical-embedding matches (+ deedsBCV).

    Both images are resampled to ``spacing`` mm cubes, normalised (CT clip, MR percentiles) and
    embedded; every ``step``-th fine node inside the fixed body is matched into the moving image
    and back (kept when the similarity, in [-1, 1], exceeds ``threshold`` and the match is
    cycle-consistent); a rigid or affine transform is fitted with RANSAC in world mm; the moving
    image is resampled onto the fixed grid in one interpolation. Writes into ``out``:
    ``moved.nii.gz``, ``transform.json`` (fixed world -> moving world, RAS+ mm, its inverse and
    the fit's statistics) and ``transform.txt`` (the 4x4 matrix). With ``deeds`` the rigidly or
    affinely aligned pair (on the padded isotropic grid, in ``out/deeds``) is refined by the
    installed deedsBCV and its displacement field is applied by segfm on the original grids:
    ``moved_deeds.nii.gz``.

    Args:
        fixed: Fixed NIfTI volume.
        moving: Moving NIfTI volume.
        ckpt: Anatomical-embedding checkpoint (released SAM/SAM++/Cross-SAM file, segfm export
            or Lightning checkpoint); None keeps random weights (smoke tests only).
        out: Output folder.
        transform: ``rigid`` (rotation limited to ``max_rotation``) or ``affine``.
        deeds: deedsBCV executable for deformable refinement.
        arch: Network of the checkpoint (``sam``, ``sam_pp``, ``cross_sam``).
        fixed_modality: Intensity normalisation of the fixed image (``ct`` or ``mr``).
        moving_modality: Intensity normalisation of the moving image.
        spacing: Isotropic spacing in mm the images are embedded at.
        step: Spacing of the matched grid in fine nodes (fine nodes are ``2 * spacing`` mm).
        threshold: Smallest averaged similarity of a kept match.
        max_rotation: Largest rigid rotation in radians.
        ransac_threshold: Largest residual of an inlier in mm.
        deeds_args: deedsBCV options (Cross-SAM recipe by default; the finest ``-G`` is its grid).
        device: Torch device of the network (``cpu``, ``cuda``, ``npu``).

    Returns:
        The contents of ``transform.json``.

    Raises:
        ConfigError: If an option is out of range.
        DataError: If an image cannot be read or too few reliable matches are found.
    """
    from segfm.tracking import register_files as lib

    options = lib.RegistrationOptions(
        transform,
        (fixed_modality, moving_modality),
        spacing,
        step,
        threshold,
        max_rotation,
        ransac_threshold,
        deeds,
        deeds_args,
    )
    report = lib.register_files(fixed, moving, lib.load_embedder(ckpt, arch, device), out, options)
    print(
        f"registered {moving} to {fixed} ({transform}): {report['inliers']} of "
        f"{report['matches']} matches inliers, mean residual {report['inlier_residual_mm']:.2f} "
        f"mm; wrote {out}"
    )
    return report
