"""The 2.5D slice PNGs that ``python -m data_tools.process_2d`` writes beside a CVPR npz root.

Each dataset folder of the npz root (:mod:`segfm.data.io.npz_cvpr`) gains::

    <DATASET>/processed*/train.json              {"annotations": [{"file_name": ...}, ...]}
    <DATASET>/processed*/train/<png name>        RGB image: channels (i+1, i-1, i) in file order
    <DATASET>/processed*/train_mask/<png name>   8- or 16-bit label ids

A PNG is named ``<stem>_<iii>.png`` (slice ``iii`` along the volume's slicing axis) or
``<stem>_view<k>_<iii>.png`` (along axis ``k`` of an isotropic volume), ``<stem>`` being the
npz file's. Every problem raises :class:`~segfm.errors.DataError` naming the file and the fix.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image

from segfm.data.io.json_file import read_json
from segfm.errors import DataError

PNG_NAME = re.compile(r"(?P<stem>.+?)(?:_view(?P<axis>[12]))?_(?P<index>\d+)\.png")
REDO = "rerun python -m data_tools.process_2d"

#: one listed slice: the image PNG, the slicing axis, the slice index along it
ListedPng = tuple[Path, int, int]


def png_name(stem: str, axis: int, index: int) -> str:
    """The tool's file name of a slice: ``<stem>_<iii>.png`` or ``<stem>_view<k>_<iii>.png``."""
    view = "" if axis == 0 else f"_view{axis}"
    return f"{stem}{view}_{index:03d}.png"


def mask_of(png: Path) -> Path:
    """The label PNG of an image PNG (``train/x.png`` -> ``train_mask/x.png``)."""
    return png.parent.with_name("train_mask") / png.name


def list_processed(root: Path, dataset: str) -> dict[str, list[ListedPng]]:
    """Case id (``<DATASET>/<stem>``) to its PNGs, from every ``processed*/train.json``.

    Args:
        root: The npz root.
        dataset: The dataset folder.

    Returns:
        The listed slices per case, in listing order.

    Raises:
        DataError: If the dataset has no ``processed*/train.json`` or one is unreadable or lists
            a name the tool does not write.
    """
    listings = sorted((root / dataset).glob("processed*/train.json"))
    if not listings:
        msg = (
            f"{root / dataset} has no processed*/train.json; run python -m "
            f"data_tools.process_2d --data {root} --datasets {dataset}, or read the npz with "
            "NpzDataModule(mode='slices25d')"
        )
        raise DataError(msg)
    listed: dict[str, list[ListedPng]] = {}
    for json_file in listings:
        for ann in read_json(json_file, REDO).get("annotations", []):
            match = PNG_NAME.fullmatch(str(ann.get("file_name", "")))
            if match is None:
                msg = f"{json_file} lists {ann.get('file_name')!r}; {REDO}"
                raise DataError(msg)
            png = json_file.parent / "train" / match[0]
            slice_ = (png, int(match["axis"] or 0), int(match["index"]))
            listed.setdefault(f"{dataset}/{match['stem']}", []).append(slice_)
    return listed


def read_png(path: Path, rgb: bool, size: int) -> np.ndarray:
    """A slice PNG of the tool.

    Args:
        path: The PNG.
        rgb: An image (returned as uint8 ``[3, S, S]``, channels (i, i-1, i+1)) or a label
            (returned as ``[S, S]`` ids).
        size: The side every PNG must have.

    Returns:
        The pixels.

    Raises:
        DataError: If the file is unreadable or not ``size`` x ``size``.
    """
    try:
        with Image.open(path) as png:
            array = np.asarray(png.convert("RGB") if rgb else png)
    except OSError as e:
        msg = f"cannot read {path} ({e}); {REDO}"
        raise DataError(msg) from e
    if array.shape[:2] != (size, size):
        msg = f"{path} is {array.shape[:2]}, not {size} x {size}; rerun the tool with --size {size}"
        raise DataError(msg)
    return array[..., ::-1].transpose(2, 0, 1) if rgb else array  # files hold (i+1, i-1, i)
