"""The Sample contract: what every data module yields and every method consumes.

A sample is a plain ``dict``. Tensors are stacked by :func:`collate`; everything else is kept as
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
``meta``           ``dict``                 case id, dataset, source path, affine, ...
=================  =======================  ===================================================
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

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


Sample = dict[str, Any]
Batch = dict[str, Any]


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
    batch: Batch = {}
    for key in keys:
        values = [s[key] for s in samples]
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
    return batch
