"""User-given clicks (and boxes) per case and class, for predicting without ground truth.

The file is JSON::

    {"<case_id>": {"<class id or name>": {"fg": [[z, y, x], ...],
                                          "bg": [[z, y, x], ...],
                                          "box": [z0, y0, x0, z1, y1, x1]}}}

Coordinates are voxel indices of the source image in the axis order of the array that
:func:`segfm.data.io.nifti.read_nifti` returns, ``(z, y, x)``. ``fg`` (foreground, positive) and
``bg`` (background, negative) are optional lists of points; ``box`` is optional, its two corners
inclusive. Each class needs at least one click or a box. The evaluation harness writes the clicks
it simulated in the same format (:func:`write_clicks_file`), so they can be replayed.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segfm.data.io.atomic import save_json
from segfm.data.io.json_file import read_json
from segfm.errors import DataError

_KEYS = ("fg", "bg", "box")
_LAYOUT = '{"<case>": {"<class>": {"fg": [[z, y, x], ...], "bg": [...], "box": [...]}}}'


@dataclass(frozen=True)
class ClassClicks:
    """The prompts given for one class of one case.

    Attributes:
        fg: Foreground (positive) clicks, each a point in voxel indices ``(z, y, x)``.
        bg: Background (negative) clicks, same layout.
        box: ``(z0, y0, x0, z1, y1, x1)``, inclusive corners, or ``None``.
    """

    fg: tuple[tuple[float, ...], ...] = ()
    bg: tuple[tuple[float, ...], ...] = ()
    box: tuple[float, ...] | None = None


def _numbers(value: Any, count: int, what: str, where: str) -> tuple[float, ...]:
    """``value`` as ``count`` finite numbers, or a :class:`DataError` naming ``where``."""
    if not isinstance(value, list) or len(value) != count:
        msg = f"{where}: {what} {value!r} is not a list of {count} coordinates; {_fix(count)}"
        raise DataError(msg)
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            msg = f"{where}: {what} {value!r} holds {v!r}, not a finite number; {_fix(count)}"
            raise DataError(msg)
        out.append(float(v))
    return tuple(out)


def _fix(count: int) -> str:
    return f"write voxel indices as numbers, {count} per point, as in {_LAYOUT}"


def _parse_class(entry: Any, ndim: int, where: str) -> ClassClicks:
    if not isinstance(entry, dict):
        msg = f"{where} is a {type(entry).__name__}, not an object; the layout is {_LAYOUT}"
        raise DataError(msg)
    unknown = sorted(set(entry) - set(_KEYS))
    if unknown:
        msg = f"{where} has unknown keys {unknown}; use only 'fg', 'bg' and 'box'"
        raise DataError(msg)
    points: dict[str, tuple[tuple[float, ...], ...]] = {}
    for key in ("fg", "bg"):
        value = entry.get(key, [])
        if not isinstance(value, list):
            msg = f"{where}: '{key}' is not a list of points; the layout is {_LAYOUT}"
            raise DataError(msg)
        points[key] = tuple(_numbers(p, ndim, f"{key} point", where) for p in value)
    box = None
    if entry.get("box") is not None:
        box = _numbers(entry["box"], 2 * ndim, "box", where)
        if any(lo > hi for lo, hi in zip(box[:ndim], box[ndim:], strict=True)):
            msg = f"{where}: box {list(box)} has its first corner beyond the second; give low first"
            raise DataError(msg)
    if not points["fg"] and not points["bg"] and box is None:
        msg = f"{where} has no clicks and no box; give at least one 'fg' or 'bg' point or a 'box'"
        raise DataError(msg)
    return ClassClicks(fg=points["fg"], bg=points["bg"], box=box)


def read_clicks_file(
    path: str | os.PathLike[str], ndim: int = 3
) -> dict[str, dict[str, ClassClicks]]:
    """Read and validate a clicks file.

    Args:
        path: The JSON file.
        ndim: Number of coordinates of a point (a box has twice as many).

    Returns:
        ``{case_id: {class key: ClassClicks}}``, keys as written in the file.

    Raises:
        DataError: If the file is missing or not JSON, the nesting is wrong, a point or box has
            the wrong number of coordinates or a non-numeric one, or a class has no prompt.
    """
    path = Path(path)
    content = read_json(path, f"write it as {_LAYOUT}")
    if not content:
        msg = f"{path} lists no cases; write it as {_LAYOUT}"
        raise DataError(msg)
    out: dict[str, dict[str, ClassClicks]] = {}
    for case, classes in content.items():
        if not isinstance(classes, dict) or not classes:
            msg = (
                f"{path}: case '{case}' must map class ids or names to clicks, got {classes!r}; "
                f"the layout is {_LAYOUT}"
            )
            raise DataError(msg)
        out[case] = {
            str(c): _parse_class(e, ndim, f"{path}: case '{case}' class '{c}'")
            for c, e in classes.items()
        }
    return out


def _plain(values: Sequence[float]) -> list[float | int]:
    """Numbers for JSON: integral values as ints (``12`` rather than ``12.0``)."""
    return [int(v) if float(v).is_integer() else float(v) for v in values]


def write_clicks_file(
    path: str | os.PathLike[str], clicks: Mapping[str, Mapping[str, ClassClicks]]
) -> None:
    """Write clicks in the format :func:`read_clicks_file` reads, atomically.

    Args:
        path: Destination JSON file.
        clicks: ``{case_id: {class key: ClassClicks}}``.

    Raises:
        ValueError: If a class has no click and no box (the file could not be read back).
    """
    content: dict[str, dict[str, dict[str, Any]]] = {}
    for case, classes in clicks.items():
        content[str(case)] = {}
        for key, c in classes.items():
            if not c.fg and not c.bg and c.box is None:
                msg = f"case '{case}' class '{key}' has no clicks and no box; leave it out"
                raise ValueError(msg)
            entry: dict[str, Any] = {
                "fg": [_plain(p) for p in c.fg],
                "bg": [_plain(p) for p in c.bg],
            }
            if c.box is not None:
                entry["box"] = _plain(c.box)
            content[str(case)][str(key)] = entry
    save_json(path, content)


def check_in_bounds(clicks: ClassClicks, shape: Sequence[int], where: str) -> None:
    """Check that every click and box corner lies inside an image.

    Args:
        clicks: The prompts of one class.
        shape: Shape of the image array, ``(z, y, x)``.
        where: What the prompts belong to, for the message (e.g. ``"clicks.json: case 'a' class
            '1'"``).

    Raises:
        DataError: If a point has a coordinate outside ``[0, size - 1]`` of its axis, or a number
            of coordinates other than the image's.
    """
    shape = tuple(int(s) for s in shape)
    points = [("fg click", p) for p in clicks.fg] + [("bg click", p) for p in clicks.bg]
    if clicks.box is not None:
        half = len(clicks.box) // 2
        points += [("box corner", clicks.box[:half]), ("box corner", clicks.box[half:])]
    for what, p in points:
        inside = len(p) == len(shape) and all(
            0 <= c <= s - 1 for c, s in zip(p, shape, strict=True)
        )
        if not inside:
            msg = (
                f"{where}: {what} {list(p)} lies outside the image of shape {list(shape)}; "
                "give voxel indices from 0 to size - 1 in (z, y, x) order"
            )
            raise DataError(msg)
