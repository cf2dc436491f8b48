"""2.5D volume inference: the original's per-slice suppression and merge on known answers."""

from __future__ import annotations

import torch

from segfm.inference.volume25d import merge, suppress


def test_suppress_and_merge_known_answer() -> None:
    probs = torch.zeros(3, 4, 4)
    probs[0, :2, :2] = 0.9  # class a, existence 0.8
    probs[1, :2, :3] = 0.8  # overlaps a with IoU 4/6 > 0.5, existence 0.9: a is dropped
    probs[2, 3, 3] = 0.95  # existence 0.4: dropped
    existence = torch.tensor([0.8, 0.9, 0.4])
    kept = suppress(probs, existence, 0.5, 0.5)
    assert torch.equal(kept[0], torch.zeros(4, 4)) and torch.equal(kept[2], torch.zeros(4, 4))
    assert torch.equal(kept[1], probs[1])
    seg = merge(kept, [3, 7, 9])
    expected = torch.zeros(4, 4, dtype=torch.long)
    expected[:2, :3] = 7
    assert torch.equal(seg, expected)
    # one prompt: mask times existence > threshold
    assert torch.equal(suppress(probs[:1], torch.tensor([0.4]), 0.5, 0.5), torch.zeros(1, 4, 4))
    # merge: the larger probability wins, below 0.5 is background
    two = torch.tensor([[[0.6, 0.4]], [[0.7, 0.3]]])
    assert merge(two, [1, 2]).tolist() == [[2, 0]]
