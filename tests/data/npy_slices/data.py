"""Build a tiny dataset in the npy-slices layout, the real way: synthetic NIfTI, then pre_ct_mr.

``python -m tests.data.npy_slices.data OUT`` writes ``OUT/raw`` (nnU-Net raw) and ``OUT/npy``
(imgs/, gts/, npz/, labels.json) with 32 px slices of five small cases.
"""

from __future__ import annotations

import sys
from pathlib import Path

from data_tools.pre_ct_mr import preprocess
from data_tools.synthetic import make_dataset

SEED = 0
NUM_CASES = 5
SIZE = 32  # side of the npy slices
IN_PLANE = (40, 48)  # pixels of the source volumes
SLICES = (8, 12)


def build(folder: Path) -> Path:
    """Write the dataset under ``folder`` and return the npy root."""
    raw = make_dataset(folder / "raw", NUM_CASES, SEED, size_range=IN_PLANE, slices_range=SLICES)
    out = folder / "npy"
    preprocess(
        out,
        nnunet=raw,
        image_size=SIZE,
        min_size_3d=20,  # the structures of such small volumes are small
        min_size_2d=5,
        workers=1,
        progress=False,
    )
    return out


if __name__ == "__main__":
    print(build(Path(sys.argv[1] if len(sys.argv) > 1 else "npy_slices_data")))
