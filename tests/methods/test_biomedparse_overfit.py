"""A tiny BiomedParse learns one generated case: training can be trusted to fit.

One 3-slice volume (a disc and a bar of different intensities, two classes), its 2.5D slices
as the only batch, segfm's training step and optimiser (AdamW, lr 1e-3) for a fixed number of
steps, then the volume segmented from text with the inference path: every class reaches
DSC >= 0.90. The check can fail: with the targets rolled by one prompt in the loss (each prompt
taught its neighbour's mask) the same run ends at DSC 0.35 and 0.51.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segfm.methods.biomedparse import BiomedParse
from segfm.sample import ClassInfo
from segfm.transforms.encoding25d import encode_volume

SIZE, STEPS = 64, 80
PROMPTS = {1: "liver", 2: "spleen"}
pytestmark = pytest.mark.filterwarnings(r"ignore:You are trying to `self.log\(\)`")


def _case() -> tuple[np.ndarray, np.ndarray]:
    """Intensities 0-255 and labels ``[3, SIZE, SIZE]``."""
    g = np.random.default_rng(0)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    label = np.zeros((3, SIZE, SIZE), np.int64)
    for d in range(3):
        label[d][(yy - 24) ** 2 + (xx - 22) ** 2 < (11 + d) ** 2] = 1
        label[d, 38:54, 30 + d : 56] = 2
    image = np.where(label == 1, 190.0, np.where(label == 2, 110.0, 40.0))
    image = np.clip(image + g.normal(0, 8, label.shape), 0, 255).astype(np.float32)
    return image, label


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


def test_tiny_biomedparse_overfits_one_case() -> None:
    torch.manual_seed(0)
    image, label = _case()
    slices, _ = encode_volume(torch.from_numpy(image), size=SIZE)
    classes = {c: ClassInfo(name, (name,)) for c, name in PROMPTS.items()}
    batch = {
        "image": slices,
        "label": torch.from_numpy(label)[:, None],
        "classes": [classes] * 3,
        "meta": [{"instance": False}] * 3,
    }
    method = BiomedParse(arch="tiny", image_size=SIZE, lr=1e-3)
    optimizer = method.configure_optimizers()
    method.train()
    for step in range(STEPS):
        loss = method._step(batch, step, "train")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    method.eval()
    seg = method.segment_volume(torch.from_numpy(image), PROMPTS, instance=False).numpy()
    scores = {c: _dice(seg == c, label == c) for c in PROMPTS}
    print(f"DSC after {STEPS} steps: {scores}")  # shown with pytest -rA
    assert min(scores.values()) >= 0.90, scores
