"""Build tiny datasets for the 3D volume modules: nnU-Net raw and SAM-Med3D class folders.

``python -m tests.data.nnunet.data OUT`` writes ``OUT/Dataset001_Synth`` (six training cases,
``splits_final.json`` with two folds, two unlabelled ``imagesTs`` cases) and ``OUT/classes``
(``<class>/<dataset>/imagesTr|labelsTr``: binary masks of two classes from the same cases, plus
one dataset whose name does not start with ``ct_``).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np

from data_tools.synthetic import LABELS, make_dataset
from segfm.data.io.nifti import read_nifti, write_nifti

SEED = 0
NUM_CASES = 6
NUM_TEST = 2
IN_PLANE = (40, 48)  # pixels of the source volumes
SLICES = (12, 16)
CASES = [f"synth_{i:03d}" for i in range(NUM_CASES)]
TEST_CASES = [f"test_{i:03d}" for i in range(NUM_TEST)]
FOLDS = [{"train": CASES[:4], "val": CASES[4:]}, {"train": CASES[2:], "val": CASES[:2]}]
CLASSES = ("kidney_left", "liver")  # class folders, sorted: ids 1 and 2
CT_DATASET, OTHER_DATASET = "ct_synth", "mr_synth"


def build_nnunet(folder: Path) -> Path:
    """Write the nnU-Net raw dataset and return its folder."""
    root = make_dataset(folder / "Dataset001_Synth", NUM_CASES, SEED, IN_PLANE, SLICES)
    (root / "splits_final.json").write_text(json.dumps(FOLDS))
    extra = make_dataset(folder / "extra", NUM_TEST, SEED + 1, IN_PLANE, SLICES)
    (root / "imagesTs").mkdir()
    for i, case in enumerate(TEST_CASES):
        source = extra / "imagesTr" / f"synth_{i:03d}_0000.nii.gz"
        shutil.move(source, root / "imagesTs" / f"{case}_0000.nii.gz")
    shutil.rmtree(extra)
    return root


def build_class_folders(raw: Path, folder: Path) -> Path:
    """Write binary masks of :data:`CLASSES` from the raw cases in SAM-Med3D's layout."""
    root = folder / "classes"
    for name in CLASSES:
        for dataset, cases in ((CT_DATASET, CASES[:4]), (OTHER_DATASET, CASES[4:5])):
            for case in cases:
                label = read_nifti(raw / "labelsTr" / f"{case}.nii.gz")
                mask = (label.array == LABELS[name]).astype(np.uint8)
                out = root / name / dataset
                write_nifti(out / "labelsTr" / f"{case}.nii.gz", mask, label.affine)
                (out / "imagesTr").mkdir(parents=True, exist_ok=True)
                shutil.copy(
                    raw / "imagesTr" / f"{case}_0000.nii.gz", out / "imagesTr" / f"{case}.nii.gz"
                )
    return root


def build(folder: Path) -> tuple[Path, Path]:
    """Write both datasets under ``folder``; return the nnU-Net and class-folder roots."""
    raw = build_nnunet(folder)
    return raw, build_class_folders(raw, folder)


if __name__ == "__main__":
    print(*build(Path(sys.argv[1] if len(sys.argv) > 1 else "nnunet_data")))
