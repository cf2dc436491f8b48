"""Build a tiny root in the CVPR 2025 npz layout, with every voxel known by construction.

``python -m tests.data.npz.data OUT`` writes ``OUT/cvpr`` with three datasets: ``CT_Abd``
(semantic, classes 1 and 2), ``MR_Brain`` (semantic, classes 3 and 7) and ``PET_Lesion``
(instance: ids are lesions of one class). Labels are boxes (:data:`TRAIN`, :data:`EVAL`);
evaluation cases sit in ``CT_Abd/test`` + ``test_mask``, ``PET_Lesion/test`` + ``test_mask``
and, for ``MR_Brain``, in the top ``test`` + ``test_mask`` (one MR case has no mask).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np

from data_tools.synthetic_npz import text_prompts, write_evaluation_case, write_training_case

Box = tuple[int, int, int, int, int, int]  # z0, z1, y0, y1, x0, x1 (stops excluded)


class Case(NamedTuple):
    """A hand-made case: volume shape (D, H, W), spacing (z, y, x) and boxes by label id."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    objects: dict[int, Box]


PROMPTS = {
    "CT_Abd": {
        "1": ["Liver", "Liver in abdominal CT"],
        "2": ["Spleen", "Spleen in abdominal CT"],
        "instance_label": 0,
    },
    "MR_Brain": {
        "3": ["Left cochlea", "Left cochlea in brain MR"],
        "7": ["Tumour", "Tumour in brain MR"],
        "instance_label": 0,
    },
    "PET_Lesion": {"1": ["Lesion", "Lesion in whole-body PET"], "instance_label": 1},
}

TRAIN: dict[str, dict[str, Case]] = {
    "CT_Abd": {
        "CT_Abd_000": Case(
            (10, 40, 36), (2.5, 0.8, 0.8), {1: (2, 7, 5, 21, 4, 17), 2: (4, 9, 22, 31, 20, 31)}
        ),
        "CT_Abd_001": Case((12, 32, 32), (3.0, 1.0, 1.0), {1: (1, 6, 2, 12, 3, 13)}),
        "CT_Abd_002": Case(
            (8, 36, 40), (2.0, 0.7, 0.7), {1: (3, 8, 10, 30, 5, 25), 2: (0, 2, 2, 8, 30, 38)}
        ),
        "CT_Abd_003": Case((14, 48, 32), (1.5, 0.9, 0.9), {2: (5, 12, 20, 40, 8, 20)}),
    },
    "MR_Brain": {
        "MR_Brain_000": Case(
            (16, 32, 40), (1.0, 1.0, 1.0), {3: (4, 6, 10, 13, 10, 13), 7: (8, 14, 16, 28, 20, 36)}
        ),
        "MR_Brain_001": Case((9, 44, 44), (1.2, 0.5, 0.5), {7: (1, 8, 4, 40, 4, 20)}),
        "MR_Brain_002": Case(
            (11, 40, 32), (1.1, 0.6, 0.6), {3: (2, 4, 5, 9, 5, 9), 7: (5, 10, 20, 36, 10, 30)}
        ),
    },
    "PET_Lesion": {
        "PET_Lesion_000": Case(
            (12, 36, 36), (3.0, 2.0, 2.0), {1: (1, 4, 2, 8, 2, 8), 2: (6, 11, 20, 34, 20, 34)}
        ),
        "PET_Lesion_001": Case(
            (10, 32, 40),
            (3.0, 2.0, 2.0),
            {1: (2, 5, 3, 9, 30, 38), 2: (3, 6, 20, 25, 5, 10), 5: (7, 9, 10, 20, 10, 20)},
        ),
        "PET_Lesion_002": Case((13, 40, 36), (3.0, 2.0, 2.0), {3: (4, 9, 10, 30, 10, 26)}),
    },
}

EVAL: dict[str, dict[str, Case]] = {
    "CT_Abd": {
        "CT_Abd_t00": Case(
            (10, 36, 36), (2.5, 0.8, 0.8), {1: (2, 7, 4, 20, 4, 16), 2: (3, 8, 22, 30, 20, 30)}
        ),
        "CT_Abd_t01": Case((8, 32, 40), (2.5, 0.8, 0.8), {2: (1, 5, 5, 15, 5, 15)}),
    },
    "MR_Brain": {
        "MR_Brain_t00": Case(
            (12, 32, 32), (1.0, 1.0, 1.0), {3: (3, 5, 4, 8, 4, 8), 7: (6, 11, 12, 28, 12, 28)}
        ),
        "MR_Brain_t01": Case(
            (10, 40, 32), (1.0, 1.0, 1.0), {3: (2, 4, 6, 9, 6, 9), 7: (4, 9, 14, 30, 8, 24)}
        ),
    },
    "PET_Lesion": {
        "PET_Lesion_t00": Case(
            (12, 32, 32), (3.0, 2.0, 2.0), {1: (1, 3, 2, 6, 2, 6), 2: (5, 10, 12, 24, 12, 24)}
        ),
    },
}

#: evaluation cases that carry ``boxes`` and ``text_prompts``; and the one without a mask
WITH_PROMPTS = ("CT_Abd_t00", "MR_Brain_t01")
WITHOUT_MASK = "MR_Brain_t01"
TOP_LEVEL_EVAL = "MR_Brain"  # its evaluation cases are in <root>/test, not <root>/MR_Brain/test


def label_of(case: Case) -> np.ndarray:
    """The label volume of a case (boxes drawn in id order, later ids on top)."""
    label = np.zeros(case.shape, dtype=np.uint8)
    for i, (z0, z1, y0, y1, x0, x1) in sorted(case.objects.items()):
        label[z0:z1, y0:y1, x0:x1] = i
    return label


def image_of(case: Case) -> np.ndarray:
    """The image: a 20-35 background ramp, 60 + 30 * (id % 6) inside each object."""
    z, y, x = np.indices(case.shape)
    image = 20 + (y + x + z) % 16
    label = label_of(case)
    image[label > 0] = 60 + 30 * (label[label > 0] % 6)
    return image.astype(np.uint8)


def box_dict(box: Box) -> dict[str, int]:
    """The challenge's box of a cuboid object (no random shift)."""
    z0, z1, y0, y1, x0, x1 = box
    return {
        "z_min": z0,
        "z_max": z1 - 1,
        "z_mid": z0 + (z1 - z0) // 2,
        "z_mid_x_min": x0,
        "z_mid_y_min": y0,
        "z_mid_x_max": x1 - 1,
        "z_mid_y_max": y1 - 1,
    }


def write_root(root: Path, prompts: dict = PROMPTS) -> Path:
    """Write the layout under ``root`` (created) and return it."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "class_prompts.json").write_text(json.dumps(prompts, indent=2))
    for dataset, cases in TRAIN.items():
        (root / dataset / "train").mkdir(parents=True)
        for name, case in cases.items():
            folder = root / dataset / "train"
            write_training_case(folder, name, image_of(case), label_of(case), case.spacing)
    for dataset, cases in EVAL.items():
        folder = root if dataset == TOP_LEVEL_EVAL else root / dataset
        (folder / "test").mkdir(parents=True, exist_ok=True)
        (folder / "test_mask").mkdir(parents=True, exist_ok=True)
        for name, case in cases.items():
            boxes = prompts_of = None
            if name in WITH_PROMPTS:
                boxes = [box_dict(b) for _, b in sorted(case.objects.items())]
                prompts_of = text_prompts(dataset, sorted(case.objects), PROMPTS)
            masks = None if name == WITHOUT_MASK else folder / "test_mask"
            image, label = image_of(case), label_of(case)
            write_evaluation_case(
                folder / "test", masks, name, image, label, case.spacing, boxes, prompts_of
            )
    return root


def build(folder: Path) -> Path:
    """Write the root under ``folder`` and return it."""
    return write_root(folder / "cvpr")


if __name__ == "__main__":
    print(build(Path(sys.argv[1] if len(sys.argv) > 1 else "npz_data")))
