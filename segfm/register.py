"""Register two volumes with anatomical embeddings (``segfm register``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np

from segfm.data.io.embeddings_h5 import nifti_affine
from segfm.data.io.nifti import read_nifti, write_nifti
from segfm.errors import ConfigError, DataError
from segfm.registration.deeds import DEEDS_ARGS
from segfm.registration.pipeline import Embed, Modality, register_volumes
from segfm.registration.robust import rotation_angle
from segfm.utils.files import atomic_write_text


def _embedder(ckpt: str | None, arch: str, device: str) -> Embed:
    """An ``embed`` callable running the anatomical-embedding network on ``device``."""
    import torch

    from segfm.models.anatomical_embedding.inference import embed_volume, load_embedding_model

    model = load_embedding_model(ckpt, arch=arch).to(torch.device(device))

    def embed(image: np.ndarray) -> dict[str, np.ndarray]:
        out = embed_volume(model, torch.from_numpy(np.ascontiguousarray(image)))
        return {k: v.float().cpu().numpy() for k, v in out.items()}

    return embed


def register(
    fixed: str,
    moving: str,
    ckpt: str | None,
    out: str,
    transform: Literal["rigid", "affine"] = "affine",
    deeds: str | None = None,
    arch: str = "sam",
    fixed_modality: Modality = "ct",
    moving_modality: Modality = "mr",
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
    if spacing <= 0 or step < 1 or not -1 <= threshold <= 1 or ransac_threshold <= 0:
        msg = (
            f"need --spacing > 0 ({spacing}), --step >= 1 ({step}), --threshold in [-1, 1] "
            f"({threshold}) and --ransac_threshold > 0 ({ransac_threshold})"
        )
        raise ConfigError(msg)
    fixed_vol, moving_vol = read_nifti(fixed), read_nifti(moving)
    embed = _embedder(ckpt, arch, device)
    folder = Path(out)
    result = register_volumes(
        fixed_vol,
        moving_vol,
        embed,
        transform,
        (fixed_modality, moving_modality),
        spacing,
        step,
        threshold,
        max_rotation,
        ransac_threshold,
        deeds,
        deeds_args,
        workdir=folder / "deeds",
    )
    write_nifti(folder / "moved.nii.gz", result.moved, fixed_vol.affine)
    if result.moved_deeds is not None:
        write_nifti(folder / "moved_deeds.nii.gz", result.moved_deeds, fixed_vol.affine)
    residual = np.linalg.norm(
        result.fixed_points @ result.transform[:3, :3].T
        + result.transform[:3, 3]
        - result.moving_points,
        axis=1,
    )
    report = {
        "fixed": str(fixed),
        "moving": str(moving),
        "kind": transform,
        "world": "RAS+ mm; matrix maps fixed world points to moving world points",
        "matrix": result.transform.tolist(),
        "inverse": np.linalg.inv(result.transform).tolist(),
        "rotation_rad": rotation_angle(result.transform) if transform == "rigid" else None,
        "grid_points": result.candidates,
        "matches": len(result.fixed_points),
        "inliers": int(result.inliers.sum()),
        "inlier_residual_mm": float(np.mean(residual[result.inliers])),
        "deeds": deeds,
        "fixed_affine_zyx": nifti_affine(fixed_vol.affine).tolist(),
    }
    try:
        atomic_write_text(folder / "transform.json", json.dumps(report, indent=2) + "\n")
        text = "\n".join(" ".join(f"{v:.6f}" for v in row) for row in result.transform)
        atomic_write_text(folder / "transform.txt", text + "\n")
    except OSError as e:
        msg = f"cannot write into {folder} ({e}); pass a writable --out folder"
        raise DataError(msg) from e
    print(
        f"registered {moving} to {fixed} ({transform}): {report['inliers']} of "
        f"{report['matches']} matches inliers, mean residual {report['inlier_residual_mm']:.2f} "
        f"mm; wrote {folder}"
    )
    return report
