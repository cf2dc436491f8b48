"""Register two NIfTI files and write the moved images and the transform (``segfm register``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from segfm.data.io.embeddings_h5 import nifti_affine
from segfm.data.io.nifti import read_nifti, write_nifti
from segfm.errors import ConfigError, DataError
from segfm.tracking.deeds import DEEDS_ARGS
from segfm.tracking.registration import Embed, Modality, Registration, register_volumes
from segfm.tracking.robust import rotation_angle
from segfm.utils.files import atomic_write_text


@dataclass(frozen=True)
class RegistrationOptions:
    """How two volumes are registered (the options of ``segfm register``).

    Attributes:
        transform: ``rigid`` (rotation limited to ``max_rotation``) or ``affine``.
        modalities: Intensity normalisation of (fixed, moving).
        spacing: Isotropic spacing in mm the images are embedded at.
        step: Spacing of the matched grid in fine nodes.
        threshold: Smallest averaged similarity of a kept match, in [-1, 1].
        max_rotation: Largest rigid rotation in radians.
        ransac_threshold: Largest residual of an inlier in mm.
        deeds: deedsBCV executable for deformable refinement (None: skip).
        deeds_args: deedsBCV options.

    Raises:
        ConfigError: If an option is out of range.
    """

    transform: Literal["rigid", "affine"] = "affine"
    modalities: tuple[Modality, Modality] = ("ct", "mr")
    spacing: float = 2.0
    step: int = 4
    threshold: float = 0.5
    max_rotation: float = 0.2
    ransac_threshold: float = 4.0
    deeds: str | None = None
    deeds_args: str = DEEDS_ARGS

    def __post_init__(self) -> None:
        """Refuse options out of range, naming each with its value."""
        s = self
        if s.spacing <= 0 or s.step < 1 or not -1 <= s.threshold <= 1 or s.ransac_threshold <= 0:
            msg = (
                f"need --spacing > 0 ({s.spacing}), --step >= 1 ({s.step}), --threshold in "
                f"[-1, 1] ({s.threshold}) and --ransac_threshold > 0 ({s.ransac_threshold})"
            )
            raise ConfigError(msg)


def load_embedder(ckpt: str | None, arch: str, device: str) -> Embed:
    """An ``embed`` callable running the anatomical-embedding network on ``device``.

    Args:
        ckpt: Anatomical-embedding checkpoint; None keeps random weights (smoke tests only).
        arch: Network of the checkpoint (``sam``, ``sam_pp``, ``cross_sam``, ``tiny``).
        device: Torch device of the network.

    Returns:
        A function mapping a normalised image ``[D, H, W]`` to its float32 embeddings.
    """
    import torch

    from segfm.checkpoints.anatomical_embedding import load_embedding_model
    from segfm.inference.embedding import embed_volume

    model = load_embedding_model(ckpt, arch=arch).to(torch.device(device))

    def embed(image: np.ndarray) -> dict[str, np.ndarray]:
        out = embed_volume(model, torch.from_numpy(np.ascontiguousarray(image)))
        return {k: v.float().cpu().numpy() for k, v in out.items()}

    return embed


def registration_report(
    result: Registration,
    fixed: str,
    moving: str,
    fixed_affine: np.ndarray,
    options: RegistrationOptions,
) -> dict[str, Any]:
    """The contents of ``transform.json``: the matrix, its inverse and the fit's statistics."""
    matrix = result.transform
    moved_points = result.fixed_points @ matrix[:3, :3].T + matrix[:3, 3]
    residual = np.linalg.norm(moved_points - result.moving_points, axis=1)
    return {
        "fixed": str(fixed),
        "moving": str(moving),
        "kind": options.transform,
        "world": "RAS+ mm; matrix maps fixed world points to moving world points",
        "matrix": matrix.tolist(),
        "inverse": np.linalg.inv(matrix).tolist(),
        "rotation_rad": rotation_angle(matrix) if options.transform == "rigid" else None,
        "grid_points": result.candidates,
        "matches": len(result.fixed_points),
        "inliers": int(result.inliers.sum()),
        "inlier_residual_mm": float(np.mean(residual[result.inliers])),
        "deeds": options.deeds,
        "fixed_affine_zyx": nifti_affine(fixed_affine).tolist(),
    }


def write_registration(
    folder: Path, result: Registration, fixed_affine: np.ndarray, report: dict[str, Any]
) -> None:
    """Write ``moved.nii.gz`` (and ``moved_deeds.nii.gz``), ``transform.json`` and ``.txt``.

    Raises:
        DataError: If the folder is not writable.
    """
    write_nifti(folder / "moved.nii.gz", result.moved, fixed_affine)
    if result.moved_deeds is not None:
        write_nifti(folder / "moved_deeds.nii.gz", result.moved_deeds, fixed_affine)
    try:
        atomic_write_text(folder / "transform.json", json.dumps(report, indent=2) + "\n")
        text = "\n".join(" ".join(f"{v:.6f}" for v in row) for row in result.transform)
        atomic_write_text(folder / "transform.txt", text + "\n")
    except OSError as e:
        msg = f"cannot write into {folder} ({e}); pass a writable --out folder"
        raise DataError(msg) from e


def register_files(
    fixed: str, moving: str, embed: Embed, out: str, options: RegistrationOptions
) -> dict[str, Any]:
    """Register the NIfTI file ``moving`` to ``fixed`` and write the results into ``out``.

    Args:
        fixed: Fixed NIfTI volume.
        moving: Moving NIfTI volume.
        embed: Maps a normalised isotropic image to its embeddings (:func:`load_embedder`).
        out: Output folder (deedsBCV's files go to ``out/deeds``).
        options: How to register.

    Returns:
        The contents of ``transform.json``.

    Raises:
        DataError: If an image cannot be read or too few reliable matches are found.
    """
    fixed_vol, moving_vol = read_nifti(fixed), read_nifti(moving)
    folder = Path(out)
    result = register_volumes(
        fixed_vol,
        moving_vol,
        embed,
        options.transform,
        options.modalities,
        options.spacing,
        options.step,
        options.threshold,
        options.max_rotation,
        options.ransac_threshold,
        options.deeds,
        options.deeds_args,
        workdir=folder / "deeds",
    )
    report = registration_report(result, fixed, moving, fixed_vol.affine, options)
    write_registration(folder, result, fixed_vol.affine, report)
    return report
