"""Generate a small dataset in the CVPR 2025 npz layout, to try the text-prompted methods.

``python -m data_tools.synthetic_npz --output DIR --num_cases 8 --num_test 2 --seed 0`` writes::

    DIR/class_prompts.json
    DIR/CT_SynthAbdomen/train/CT_SynthAbdomen_000.npz   imgs, gts, spacing
    DIR/CT_SynthAbdomen/test/CT_SynthAbdomen_t00.npz    imgs, spacing, boxes, text_prompts
    DIR/CT_SynthAbdomen/test_mask/CT_SynthAbdomen_t00.npz   gts
    DIR/PET_SynthLesions/...                             the same for the instance dataset

The ``boxes`` of the semantic evaluation cases follow the challenge's ``get_boxes.py``
(:func:`segfm.prompts.volume_boxes`: upper middle slice, seeded random margin).
``CT_SynthAbdomen`` is semantic: the abdominal CT of :mod:`data_tools.synthetic` (liver, spleen,
kidneys, aorta; spine unlabelled) in the abdominal window (W 400, L 40) scaled to 0-255.
``PET_SynthLesions`` is an instance dataset (``instance_label: 1``): 3-7 bright separate
spherical lesions of one class in a noisy body, each with its own id. Volumes are about 32 x 96
x 96 voxels (anisotropic CT spacing, 2 mm isotropic PET), so the 2.5D encoding slices along z.
Case ``i`` of dataset ``k`` depends only on ``(seed, k, i)``; existing files are kept (rerun to
finish an interrupted run) and every file is written atomically.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from data_tools.synthetic import LABELS, make_case
from segfm.data.io.atomic import save_json, save_npz
from segfm.prompts.boxes import BOX_SEED, volume_boxes

SEMANTIC, INSTANCE = "CT_SynthAbdomen", "PET_SynthLesions"
PROMPTS: dict[str, dict[str, Any]] = {
    SEMANTIC: {
        "1": ["Liver", "Liver in abdominal CT", "liver tissue in a CT scan of the abdomen"],
        "2": ["Spleen", "Spleen in abdominal CT", "the spleen in an abdominal CT scan"],
        "3": ["Left kidney", "Left kidney in abdominal CT", "the left kidney in a CT scan"],
        "4": ["Right kidney", "Right kidney in abdominal CT", "the right kidney in a CT scan"],
        "5": ["Aorta", "Aorta in abdominal CT", "the abdominal aorta in a CT scan"],
        "instance_label": 0,
    },
    INSTANCE: {
        "1": ["Lesion", "Lesions in whole-body PET", "hypermetabolic lesions in a PET scan"],
        "instance_label": 1,
    },
}
assert [int(k) for k in PROMPTS[SEMANTIC] if k.isdigit()] == sorted(set(LABELS.values()) - {0})

#: CT window of the semantic dataset: (low, high) in HU, mapped to 0-255
CT_WINDOW = (-160.0, 240.0)


def text_prompts(dataset: str, class_ids: Sequence[int], prompts: dict[str, Any]) -> dict:
    """The ``text_prompts`` dict of an evaluation file: one prompt per class and the flag.

    Args:
        dataset: Dataset name (a key of ``prompts``).
        class_ids: Classes of the case.
        prompts: The ``class_prompts.json`` content.

    Returns:
        ``{"<id>": prompt, ..., "instance_label": 0|1}``, each prompt the class's second one (its
        first, the class name, when it has only one).
    """
    entry = prompts[dataset]
    chosen = {str(i): entry[str(i)][min(1, len(entry[str(i)]) - 1)] for i in sorted(class_ids)}
    return {**chosen, "instance_label": entry["instance_label"]}


def write_training_case(
    folder: Path, name: str, image: np.ndarray, label: np.ndarray, spacing: Sequence[float]
) -> None:
    """``folder/<name>.npz`` with ``imgs``, ``gts`` and ``spacing`` (z, y, x)."""
    save_npz(folder / f"{name}.npz", imgs=image, gts=label, spacing=np.asarray(spacing))


def write_evaluation_case(
    images: Path,
    masks: Path | None,
    name: str,
    image: np.ndarray,
    label: np.ndarray,
    spacing: Sequence[float],
    boxes: list[dict[str, int]] | None = None,
    prompts: dict | None = None,
) -> None:
    """An evaluation case as the challenge gives it: images and prompts, the mask apart.

    Args:
        images: ``test`` folder: ``<name>.npz`` with ``imgs``, ``spacing`` and, when given,
            ``boxes`` and ``text_prompts``.
        masks: ``test_mask`` folder for ``<name>.npz`` with ``gts``; ``None`` writes no mask.
        name: File stem.
        image: ``(D, H, W)`` 0-255.
        label: ``(D, H, W)`` ids.
        spacing: ``(z, y, x)`` mm.
        boxes: One box dict per class, in sorted class order.
        prompts: The ``text_prompts`` dict (:func:`text_prompts`).
    """
    extra: dict[str, Any] = {}
    if boxes is not None:
        extra["boxes"] = boxes
    if prompts is not None:
        extra["text_prompts"] = prompts
    save_npz(images / f"{name}.npz", imgs=image, spacing=np.asarray(spacing), **extra)
    if masks is not None:
        save_npz(masks / f"{name}.npz", gts=label)


def ct_case(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """A semantic abdominal CT case: uint8 image 0-255, uint8 class ids, spacing (z, y, x)."""
    shape = (int(rng.integers(28, 37)), *(int(n) for n in rng.integers(88, 105, size=2)))
    spacing_z, spacing_xy = round(float(rng.uniform(2.5, 4.0)), 2), round(rng.uniform(0.8, 1.1), 3)
    hu, label = make_case(rng, shape, spacing_z)
    low, high = CT_WINDOW
    image = np.clip((hu.astype(np.float32) - low) / (high - low) * 255, 0, 255)
    return np.rint(image).astype(np.uint8), label, (spacing_z, spacing_xy, spacing_xy)


def lesion_case(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """An instance PET case: separate spherical lesions with ids 1..n, spacing 2 mm."""
    shape = (int(rng.integers(28, 37)), *(int(n) for n in rng.integers(88, 105, size=2)))
    z, y, x = np.indices(shape, dtype=np.float32)
    d, h, w = shape
    body = ((y - h / 2) / (0.42 * h)) ** 2 + ((x - w / 2) / (0.45 * w)) ** 2 < 1
    uptake = np.where(body, rng.uniform(40, 60), 5.0).astype(np.float32)
    label = np.zeros(shape, dtype=np.uint8)
    centres: list[tuple[np.ndarray, float]] = []
    for _ in range(200):  # rejection sampling of non-touching spheres inside the body
        if len(centres) == int(rng.integers(3, 8)):
            break
        r = float(rng.uniform(3, 7))
        c = rng.uniform([r, 0.25 * h, 0.25 * w], [d - r, 0.75 * h, 0.75 * w])
        if all(np.linalg.norm(c - c2) > r + r2 + 2 for c2, r2 in centres):
            centres.append((c, r))
    for i, (c, r) in enumerate(centres, start=1):
        inside = (z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 < r**2
        label[inside] = i
        uptake[inside] = rng.uniform(150, 230)
    image = uptake + rng.normal(0, 8, size=shape).astype(np.float32)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), label, (2.0, 2.0, 2.0)


def make_dataset(output: str | Path, num_cases: int = 8, num_test: int = 2, seed: int = 0) -> Path:
    """Write the two datasets and ``class_prompts.json`` under ``output``.

    Args:
        output: Root folder (created).
        num_cases: Training cases per dataset (``<DS>_000``, ...).
        num_test: Evaluation cases per dataset (``<DS>_t00``, ...), with masks.
        seed: Seed of the cases.

    Returns:
        The root.

    Raises:
        ValueError: If ``num_cases`` < 1 or ``num_test`` < 0.
    """
    if num_cases < 1 or num_test < 0:
        msg = f"need num_cases >= 1 and num_test >= 0, got {num_cases} and {num_test}"
        raise ValueError(msg)
    root = Path(output)
    save_json(root / "class_prompts.json", PROMPTS)
    jobs = [
        (k, dataset, split, i)
        for k, dataset in enumerate((SEMANTIC, INSTANCE))
        for split, count in (("train", num_cases), ("test", num_test))
        for i in range(count)
    ]
    for k, dataset, split, i in tqdm(jobs, desc="synthetic npz", unit="case"):
        name = f"{dataset}_{i:03d}" if split == "train" else f"{dataset}_t{i:02d}"
        if (root / dataset / split / f"{name}.npz").is_file():
            continue  # written by an earlier run (the mask is written first below)
        rng = np.random.default_rng([seed, k, i, split == "test"])
        image, label, spacing = (ct_case if dataset == SEMANTIC else lesion_case)(rng)
        if split == "train":
            write_training_case(root / dataset / "train", name, image, label, spacing)
            continue
        ids = sorted(int(v) for v in np.unique(label) if v)
        instance = PROMPTS[dataset]["instance_label"] == 1
        boxes = None
        if not instance:
            # the challenge's get_boxes.py rule: upper middle slice, a random 0-5 px margin
            # scaled by size / 256, seeded with its 2025 (one generator per case)
            found = volume_boxes(
                torch.from_numpy(label.astype(np.int64)), ids, margin=True, seed=BOX_SEED
            )
            boxes = [found[i] for i in ids]
        prompts = text_prompts(dataset, [1] if instance else ids, PROMPTS)
        mask = root / dataset / "test_mask"
        save_npz(mask / f"{name}.npz", gts=label)
        write_evaluation_case(
            root / dataset / "test", None, name, image, label, spacing, boxes, prompts
        )
    return root


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m data_tools.synthetic_npz --output DIR [--num_cases N]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True, type=Path, help="root folder to write")
    parser.add_argument("--num_cases", type=int, default=8, help="training cases per dataset")
    parser.add_argument("--num_test", type=int, default=2, help="evaluation cases per dataset")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    args = parser.parse_args(argv)
    root = make_dataset(args.output, args.num_cases, args.num_test, args.seed)
    print(f"wrote {SEMANTIC} and {INSTANCE} to {root}")


if __name__ == "__main__":
    main()
