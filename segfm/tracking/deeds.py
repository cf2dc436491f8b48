"""deedsBCV: running the installed binary and applying its displacement field ourselves.

deedsBCV (mattiaspaul/deedsBCV, ``src/deedsBCV0.cpp``) registers ``-M moving`` to ``-F fixed``
(two NIfTI files of one shape) and writes ``<stem>_deformed.nii.gz`` and
``<stem>_displacements.dat``: raw little-endian float32, three blocks ``u, v, w`` of
``m1 * n1 * o1`` values each, on the control grid of the finest level (``m1 = m // step`` etc.
for NIfTI dimensions ``m, n, o`` = ``(i, j, k)``, C-integer division), index
``i + j*m1 + k*m1*n1``; so each block reshapes to ``[o1, n1, m1]`` = segfm's ``(z, y, x)``.
``u`` is the displacement along ``j`` (NIfTI 2nd axis, segfm ``y``), ``v`` along ``i``
(1st, segfm ``x``), ``w`` along ``k`` (3rd, segfm ``z``), in voxels of the full image.
``applyBCVfloat`` upsamples them trilinearly with control point ``c`` at voxel ``c * step``
(``upsampleDeformationsCL``: voxel ``i`` reads the grid at ``i * m1 / m``, clamped) and warps
the moving image at ``(i + v, j + u, k + w)``.

applyBCVfloat guesses ``step`` as the cube root of the size ratio, which is wrong for
anisotropic or non-cubic grids (the original's patched ``applyBCVfloat_aniso.cpp``, missing
from its repository, hard-coded ``final_ratio = 3``). Here ``step`` is the finest ``-G`` value,
the sizes are checked against the file, and the field is applied in world space
(:class:`~segfm.tracking.resample.Displacement`), so it carries over to any (anisotropic,
original-resolution) output grid.
"""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from segfm.errors import ConfigError, DataError

#: deedsBCV options of the Cross-SAM recipe (training.md); the finest grid step is 3
DEEDS_ARGS = "-l 3 -G 5x4x3 -L 5x4x3 -Q 2x2x1"


def finest_step(args: str) -> int:
    """The finest control-grid step of deedsBCV options (the last value of ``-G``).

    Args:
        args: deedsBCV options, e.g. ``"-l 3 -G 5x4x3 -L 5x4x3 -Q 2x2x1"``.

    Returns:
        The step in voxels.

    Raises:
        ConfigError: If ``-G`` is missing or malformed.
    """
    parts = shlex.split(args)
    try:
        values = [int(v) for v in parts[parts.index("-G") + 1].split("x")]
    except (IndexError, ValueError) as e:
        msg = f"deeds options {args!r} need -G like 5x4x3 (its last value is the finest step)"
        raise ConfigError(msg) from e
    return values[-1]


def run_deeds(binary: str, fixed: Path, moving: Path, stem: Path, args: str = DEEDS_ARGS) -> Path:
    """Run ``deedsBCV -F fixed -M moving <args> -O stem``.

    Args:
        binary: Path of the deedsBCV executable.
        fixed: Fixed NIfTI (``.nii.gz``, deedsBCV's requirement).
        moving: Moving NIfTI of the same shape.
        stem: Output stem.
        args: Further deedsBCV options.

    Returns:
        The displacement file ``<stem>_displacements.dat``.

    Raises:
        ConfigError: If the binary is missing or fails.
        DataError: If it ran but wrote no displacement file.
    """
    exe = Path(binary)
    if not exe.is_file():
        msg = f"--deeds {binary} is not a file; build deedsBCV (mattiaspaul/deedsBCV, make)"
        raise ConfigError(msg)
    cmd = [str(exe), "-F", str(fixed), "-M", str(moving), *shlex.split(args), "-O", str(stem)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except OSError as e:
        msg = f"cannot run {binary} ({e}); check it is an executable deedsBCV"
        raise ConfigError(msg) from e
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        msg = f"{shlex.join(cmd)} failed with status {done.returncode}: {' | '.join(tail)}"
        raise ConfigError(msg)
    out = Path(f"{stem}_displacements.dat")
    if not out.is_file():
        msg = f"{binary} finished but wrote no {out}; check its output above"
        raise DataError(msg)
    return out


def read_displacements(path: Path, image_shape: Sequence[int], step: int) -> np.ndarray:
    """Read a ``*_displacements.dat`` as ``[3, z1, y1, x1]`` ``(dz, dy, dx)`` voxel displacements.

    Args:
        path: The file.
        image_shape: ``(Z, Y, X)`` of the images deedsBCV registered.
        step: The finest control-grid step.

    Returns:
        float32 ``[3, Z // step, Y // step, X // step]``.

    Raises:
        DataError: If the file size does not match the grid.
    """
    grid = [int(n) // step for n in image_shape]
    data = np.fromfile(path, dtype="<f4")
    if data.size != 3 * int(np.prod(grid)):
        msg = (
            f"{path} holds {data.size} values, not 3 x {grid} for image {tuple(image_shape)} at "
            f"grid step {step}; the -G of the run must end with {step} (or pass its finest step)"
        )
        raise DataError(msg)
    u, v, w = data.reshape(3, *grid)  # along NIfTI j (y), i (x), k (z)
    return np.stack([w, u, v])  # (dz, dy, dx)


def upsample_displacements(field: np.ndarray, image_shape: Sequence[int]) -> np.ndarray:
    """Upsample a control-grid field to every voxel exactly as ``upsampleDeformationsCL``.

    Args:
        field: ``[3, z1, y1, x1]`` displacements.
        image_shape: ``(Z, Y, X)`` of the full grid.

    Returns:
        float32 ``[3, Z, Y, X]``.
    """
    out = np.asarray(field, dtype=np.float32)
    for axis, n in enumerate(image_shape, start=1):
        n1 = out.shape[axis]
        pos = np.arange(n) * (n1 / n)
        lo = np.floor(pos).astype(int)
        w = (pos - lo).astype(np.float32)
        a, b = np.clip(lo, 0, n1 - 1), np.clip(lo + 1, 0, n1 - 1)
        shape = [1] * out.ndim
        shape[axis] = n
        w = w.reshape(shape)
        out = np.take(out, a, axis=axis) * (1 - w) + np.take(out, b, axis=axis) * w
    return out
