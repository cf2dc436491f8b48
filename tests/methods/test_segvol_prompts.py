"""SegVol's training prompts over many draws against the original's rule.

The rule is BAAI-DCAI/SegVol @5768c97 ``network/model.py`` lines 78-200 (six prompt options per
category and step; six pseudo-mask passes, points then box; 1 + U[0, 10] positive and U[0, 10]
negative points, U[4, 10] extra positives on pseudo regions, padded to 21; the tight box;
regions > 90 % inside a pseudo box join the target) and ``utils/monai_inferers_utils.py`` lines
365-460, as written in ``benchmarks/reference/train_segvol.py`` and drawn with the original's
sources of randomness (:class:`~benchmarks.reference.train_segvol.OriginalDraws`).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import torch
from torch import Tensor

from benchmarks.reference import train_segvol as ref
from data_tools.tiny_clip import write_tiny_clip
from segfm.methods.segvol import SegVol
from segfm.prompts import mask_box, sample_points
from segfm.sample import ClassInfo

ROI = (16, 32, 32)
DRAWS = 1500


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _blob(shape: tuple[int, ...], lo: tuple[int, ...], hi: tuple[int, ...]) -> Tensor:
    mask = torch.zeros(shape, dtype=torch.bool)
    mask[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] = True
    return mask


def _counts(labels: Tensor) -> tuple[int, int]:
    return int((labels == 1).sum()), int((labels == 0).sum())


def _segfm_counts(mask: Tensor, min_positive: int = 0) -> list[tuple[int, int]]:
    gen = torch.Generator().manual_seed(0)
    out = []
    for _ in range(DRAWS):
        drawn = sample_points(mask, min_positive=min_positive, generator=gen)
        assert drawn is not None
        coords, labels = drawn
        assert coords.shape == (21, 3) and labels.shape == (21,)
        positive = coords[labels == 1].long()
        negative = coords[labels == 0].long()
        assert mask[tuple(positive.T)].all() and not mask[tuple(negative.T)].any()
        assert len(set(map(tuple, negative.tolist()))) == len(negative)  # distinct negatives
        out.append(_counts(labels))
    return out


def _original_counts(mask: Tensor, min_positive: int = 0) -> list[tuple[int, int]]:
    draws = ref.OriginalDraws(0)
    out = []
    for _ in range(DRAWS):
        n_pos, n_neg = draws.randint(min_positive, 10), draws.randint(0, 10)
        _, labels = ref.select_points(mask.float(), n_pos, n_neg, 20, draws)
        assert labels.shape == (21,)
        out.append(_counts(labels))
    return out


def _shares(values: list[int]) -> dict[int, float]:
    return {k: v / len(values) for k, v in Counter(values).items()}


@pytest.mark.parametrize(
    ("min_positive", "positives"),
    [(0, range(1, 12)), (4, range(5, 12))],  # supervised: 1 + U[0, 10]; pseudo: 1 + U[4, 10]
)
def test_point_counts_and_split_follow_the_original(min_positive: int, positives: range) -> None:
    mask = _blob(ROI, (3, 5, 6), (9, 19, 22))  # 1344 voxels: every count is reachable
    for counts in (_segfm_counts(mask, min_positive), _original_counts(mask, min_positive)):
        pos = _shares([p for p, _ in counts])
        neg = _shares([n for _, n in counts])
        assert set(pos) == set(positives) and set(neg) == set(range(11))
        assert all(abs(s - 1 / len(positives)) < 0.03 for s in pos.values()), pos
        assert all(abs(s - 1 / 11) < 0.03 for s in neg.values()), neg
        mean_pos = sum(p for p, _ in counts) / DRAWS
        assert abs(mean_pos - (1 + (min_positive + 10) / 2)) < 0.25
        assert abs(sum(n for _, n in counts) / DRAWS - 5) < 0.25


def test_small_masks_count_positives_as_the_original() -> None:
    # 3 voxels: the extra positives are a permutation of the 3 that may repeat the first, so
    # 1 + min(U[0, 10], 3) positive labels: 1, 2, 3 with 1/11 each and 4 with 8/11
    mask = _blob(ROI, (4, 4, 4), (5, 5, 7))
    for counts in (_segfm_counts(mask), _original_counts(mask)):
        pos = _shares([p for p, _ in counts])
        expected = {1: 1 / 11, 2: 1 / 11, 3: 1 / 11, 4: 8 / 11}
        assert set(pos) == set(expected)
        assert all(abs(pos[k] - v) < 0.03 for k, v in expected.items()), pos


def test_box_is_the_tight_box_without_jitter() -> None:
    gen = torch.Generator().manual_seed(3)
    for _ in range(40):
        lo = [int(torch.randint(0, s - 2, (1,), generator=gen)) for s in ROI]
        hi = [
            a + 1 + int(torch.randint(0, s - a - 1, (1,), generator=gen))
            for a, s in zip(lo, ROI, strict=True)
        ]
        mask = _blob(ROI, tuple(lo), tuple(hi)) & (torch.rand(ROI, generator=gen) > 0.3)
        if not mask.any():
            continue
        box = mask_box(mask)
        assert box is not None
        assert torch.equal(box, ref.generate_box(mask).float())  # jitter range 0: equal always
    assert torch.equal(ref.generate_box(torch.zeros(ROI)), torch.full((6,), -1).long())
    assert mask_box(torch.zeros(ROI, dtype=torch.bool)) is None  # segfm: no sentinel box


@pytest.fixture(scope="module")
def method(tmp_path_factory: pytest.TempPathFactory) -> SegVol:
    clip = write_tiny_clip(tmp_path_factory.mktemp("clip") / "clip")
    torch.manual_seed(0)
    model = SegVol(arch="tiny", clip_dir=str(clip), roi_size=ROI, normalize="none")
    model.log = lambda *a, **k: None  # type: ignore[method-assign]
    return model


def _regions() -> Tensor:
    regions = torch.zeros(ROI, dtype=torch.long)
    regions[:, 16:] = 1
    regions[8:] += 2
    regions[2:5, 3:7, 3:7] = 4  # wholly inside region 0's box
    regions[10:14, 20:30, 4:12] = 5  # wholly inside region 3's box
    regions[:2] = -1
    return regions


def test_pseudo_regions_are_uniform_and_box_passes_add_regions_inside(method: SegVol) -> None:
    regions = _regions()
    gen = torch.Generator().manual_seed(0)
    picked: list[int] = []
    for step in range(600):
        drawn = method._pseudo_target(regions, step % 2 == 1, gen)
        assert drawn is not None
        target, box, points = drawn
        ids = set(torch.unique(regions[target]).tolist())
        if step % 2 == 0:  # points: exactly one region, 5 to 11 positive points in it
            assert box is None and points is not None and len(ids) == 1
            assert 5 <= int((points[1] == 1).sum()) <= 11
            picked.append(ids.pop())
            continue
        assert points is None and box is not None
        region = min(ids - {4, 5}) if ids - {4, 5} else min(ids)
        # the original's rule on the same region: its target and box
        chosen = _Choice(region)
        labels, boxes = ref.build_pseudo_box_prompt_label((1, 1, *ROI), regions[None, None], chosen)
        assert torch.equal(labels[0, 0].bool(), target)
        assert torch.equal(boxes[0], box)
        picked.append(region)
    shares = _shares(picked)
    assert set(shares) == {0, 1, 2, 3, 4, 5}  # -1 is never a region; 0 is one
    assert all(abs(s - 1 / 6) < 0.06 for s in shares.values()), shares


class _Choice(ref.OriginalDraws):
    def __init__(self, region: int) -> None:
        super().__init__(0)
        self.region = region

    def choice(self, ids: Tensor) -> int:
        assert self.region in ids.tolist()
        return self.region


def test_every_step_decodes_six_combinations_and_six_pseudo_passes(method: SegVol) -> None:
    label = torch.zeros(2, 1, *ROI, dtype=torch.long)
    label[0, 0, 3:9, 5:19, 6:22] = 1
    label[1, 0, 7:14, 12:28, 3:13] = 1
    names = {1: ClassInfo("liver")}
    batch = {
        "image": torch.rand(2, 1, *ROI),
        "label": label,
        "pseudo_label": _regions()[None, None].repeat(2, 1, 1, 1, 1),
        "classes": [names, names],
    }
    calls: list[str] = []
    decode = method._decode_full

    def spy(embeddings: Tensor, text: Any, points: Any, boxes: Any) -> Tensor:
        kinds = [k for k, v in (("box", boxes), ("point", points), ("text", text)) if v is not None]
        calls.append("+".join(kinds))
        return decode(embeddings, text, points, boxes)

    method._decode_full = spy  # type: ignore[method-assign]
    try:
        for step in range(3):
            calls.clear()
            method._step(batch, step, "train")
            supervised = ["+".join(sorted(c.split("+"))) for c in calls[:6]]
            original = ["+".join(sorted(c.split("+"))) for c in ref.PROMPT_OPTIONS]
            assert supervised == original  # each combination once: 1/6 of the decodes each
            assert calls[6:] == ["point", "box"] * 3  # pseudo passes: points, box, ...
    finally:
        del method._decode_full
