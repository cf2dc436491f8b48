"""User prompts of a case moved from its source image onto the grid a method sees.

A clicks file (:mod:`segfm.data.io.clicks_file`) gives voxel indices of the source image; a
data module may have resampled the volume. The points go through world space with the two
affines (:func:`segfm.data.io.geometry.map_points`), are rounded to voxels, and must land
inside the volume.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from segfm.data.io.clicks_file import ClassClicks, check_in_bounds
from segfm.data.io.geometry import map_points
from segfm.errors import DataError


def _class_id(key: str, by_name: Mapping[str, int], where: str) -> int:
    if key.isdigit():
        return int(key)
    if key in by_name:
        return by_name[key]
    msg = (
        f"{where} names class {key!r}, which the data does not know; "
        f"use a class id or one of {sorted(by_name)}"
    )
    raise DataError(msg)


def case_clicks_on_grid(
    given: Mapping[str, ClassClicks],
    class_names: Mapping[int, str],
    meta: Mapping[str, Any],
    shape: Sequence[int],
    where: str,
) -> dict[int, ClassClicks]:
    """A case's prompts by class id, in integer voxels of the grid the method sees.

    Args:
        given: The case's entry of a clicks file: prompts by class id or name.
        class_names: Class id per name known to the data.
        meta: The case's metadata; ``source_affine`` and ``affine`` (when both are present) map
            the source image's voxels onto the volume's.
        shape: Shape ``(z, y, x)`` of the volume.
        where: The file and case, for messages.

    Returns:
        Prompts per class id, every coordinate an integer voxel index inside ``shape``.

    Raises:
        DataError: If a class is unknown or a point lands outside the volume.
    """
    by_name = {name: c for c, name in class_names.items()}
    src, dst = meta.get("source_affine"), meta.get("affine")
    out: dict[int, ClassClicks] = {}
    for key, clicks in given.items():
        class_id = _class_id(key, by_name, where)
        corners = [] if clicks.box is None else [clicks.box[:3], clicks.box[3:]]
        points = np.asarray([*clicks.fg, *clicks.bg, *corners], dtype=np.float64).reshape(-1, 3)
        if src is not None and dst is not None:
            points = map_points(points, np.asarray(src), np.asarray(dst))
        grid = [tuple(int(v) for v in p) for p in np.rint(points)]
        n_fg, n_bg = len(clicks.fg), len(clicks.bg)
        box = grid[n_fg + n_bg :]
        moved = ClassClicks(
            fg=tuple(grid[:n_fg]),
            bg=tuple(grid[n_fg : n_fg + n_bg]),
            box=tuple(min(a, b) for a, b in zip(*box, strict=True))
            + tuple(max(a, b) for a, b in zip(*box, strict=True))
            if box
            else None,
        )
        check_in_bounds(moved, shape, f"{where} class {key!r} (on the volume's grid)")
        out[class_id] = moved
    return out
