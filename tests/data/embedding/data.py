"""Build the tiny anatomical-embedding dataset of the tests (3 smooth-blob 24x48x48 scans at 2 mm).

``python -m tests.data.embedding.data OUT`` writes, with :mod:`data_tools.synthetic_embedding`,
``vol_<i>.nii.gz`` (CT-like HU), ``vol_<i>_mask.nii.gz``, ``vol_<i>_label.nii.gz`` (three
organs), ``vol_<i>_mr.nii.gz`` (the same anatomy on another grid, inverted intensities, aligned
in world space), ``index.csv`` (header ``name``) and ``pairs.csv`` (header ``name,ct,mr``).
"""

from __future__ import annotations

import sys
from pathlib import Path

from data_tools.synthetic_embedding import build as build_dataset

SEED = 0
NUM_CASES = 3
SHAPE = (24, 48, 48)  # z, y, x voxels at 2 mm
TEXTURE_PERIOD = 0  # no repeated texture: a tiny network learns this data in seconds
ANATOMY_SIGMA = 2.5  # voxels


def build(root: Path) -> Path:
    """Write the dataset into ``root`` (in this process) and return it."""
    return build_dataset(root, NUM_CASES, SHAPE, TEXTURE_PERIOD, SEED, 0, ANATOMY_SIGMA)


if __name__ == "__main__":
    build(Path(sys.argv[1]))
