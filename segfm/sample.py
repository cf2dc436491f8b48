"""The Sample contract: what every data module yields and every method consumes.

The ground floor of segfm: it imports nothing of segfm, and every part may import it. A sample
is a ``dict`` typed by :class:`Sample` (a ``TypedDict``, so Lightning moves batches to the
device as it moves any dict). Tensors are stacked by :func:`collate`; everything else is kept as
a per-sample list.

=================  =======================  ===================================================
key                type                     meaning
=================  =======================  ===================================================
``image``          float32 ``[C, *S]``      ``S`` is ``(H, W)`` or ``(D, H, W)``; normalised as
                                            the data module declares
``label``          int64 ``[1, *S]``        0 = background; class ids (or instance ids)
``pseudo_label``   int64 ``[1, *S]``        optional unsupervised regions, -1 = ignore
``classes``        ``dict[int, ClassInfo]`` class id to name and text prompts
``spacing``        float ``[len(S)]``       voxel size in mm, same axis order as ``S``
``meta``           :class:`CaseMeta`        case id, dataset, source path, affine, instance
                                            flag, prompts stored with the case, ...
=================  =======================  ===================================================
"""

from __future__ import annotations

from typing import Any, NamedTuple, TypedDict

import numpy as np
import torch
from torch import Tensor

TENSOR_KEYS = ("image", "label", "pseudo_label", "spacing")


class ClassInfo(NamedTuple):
    """What a class id means.

    Immutable, and a named tuple rather than a frozen dataclass: Lightning's ``batch_to_device``
    rebuilds every dataclass in a batch by assigning its fields, which a frozen one refuses.

    Args:
        name: Short name of the class (``"liver"``).
        prompts: Text prompts that describe it; the first is the canonical one.
    """

    name: str
    prompts: tuple[str, ...] = ()


class CaseMeta(TypedDict, total=False):
    """What a protocol, a writer or a method needs to know of a case besides its arrays.

    Every key is optional: a data module fills those its format has.

    Attributes:
        case_id: Name of the case (file stem), used in tables and output file names.
        dataset: Dataset (or M3D-Seg code) the case belongs to.
        source: Path of the image file.
        label_source: Path of the label file, when it is another file.
        path: Path of the npz file a 2D slice was cut from.
        file_name: File name of an npz case (predictions are written under the same name).
        instance: The label holds instance ids (score with detection F1, predict instances).
        affine: Voxel-to-world matrix ``4 x 4`` of the sample's grid.
        source_affine: Voxel-to-world matrix of the file's own grid (to paste predictions back).
        source_shape: Shape of the file's own grid, ``(z, y, x)``.
        original_shape: Shape of the stored array before axes were reordered.
        transpose: Axis order that maps the stored array onto the sample's axes.
        text_prompts: Text per class id stored with the case (CVPR 2025 text track).
        boxes: Box per class id stored with the case (CVPR 2025 interactive track).
        slice_index: Index of a 2D slice in its volume.
        axis: Axis of the volume a 2.5D slice was cut along (0, or 1 / 2 for the extra views).
        shape: Shape of a whole volume, ``(z, y, x)`` (npy-slice cases).
        case_id2: Name of the second volume of a pair (anatomical embeddings).
        kind: How a pair was made (anatomical embeddings).
    """

    case_id: str
    dataset: str
    source: str
    label_source: str
    path: str
    file_name: str
    instance: bool
    affine: np.ndarray | list[list[float]]
    source_affine: np.ndarray | list[list[float]]
    source_shape: tuple[int, ...]
    original_shape: tuple[int, ...]
    transpose: tuple[int, ...]
    text_prompts: dict[int, str]
    boxes: dict[int, Any]
    slice_index: int
    axis: int
    shape: tuple[int, ...]
    case_id2: str
    kind: str


class Sample(TypedDict, total=False):
    """One sample as a data module yields it (see the module docstring for the keys)."""

    image: Tensor
    label: Tensor
    pseudo_label: Tensor
    classes: dict[int, ClassInfo]
    spacing: Tensor
    meta: CaseMeta


class Batch(TypedDict, total=False):
    """Samples collated by :func:`collate`: tensors stacked, the rest as per-sample lists."""

    image: Tensor
    label: Tensor
    pseudo_label: Tensor
    classes: list[dict[int, ClassInfo]]
    spacing: Tensor
    meta: list[CaseMeta]


def collate(samples: list[Sample]) -> Batch:
    """Stack the tensors of a list of samples and keep the rest as lists.

    Args:
        samples: Samples of equal spatial shape.

    Returns:
        A batch: ``image`` ``[B, C, *S]``, ``label`` ``[B, 1, *S]``, ``spacing`` ``[B, len(S)]``,
        and ``classes`` / ``meta`` as lists of length ``B``.

    Raises:
        ValueError: If the samples disagree on their keys or tensor shapes.
    """
    if not samples:
        msg = "cannot collate an empty list of samples"
        raise ValueError(msg)
    keys = samples[0].keys()
    batch: dict[str, Any] = {}
    for key in keys:
        values = [s[key] for s in samples]  # type: ignore[literal-required]
        if key in TENSOR_KEYS:
            shapes = {tuple(v.shape) for v in values}
            if len(shapes) > 1:
                names = [s.get("meta", {}).get("case_id", "?") for s in samples]
                msg = (
                    f"samples {names} have different '{key}' shapes {sorted(shapes)}; "
                    "resize or crop them to one size"
                )
                raise ValueError(msg)
            batch[key] = torch.stack([torch.as_tensor(v) for v in values])
        else:
            batch[key] = values
    return batch  # type: ignore[return-value]
