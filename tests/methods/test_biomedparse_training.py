"""segfm's BiomedParse training step against the original's (reference: train_biomedparse.py).

One batch (a 5-class semantic slice: distinct classes, absent ones negative; a 3-class slice:
classes with replacement; an instance slice), the same weights in segfm's tiny network and the
reference network, the same (class, prompt) draws (the reference draws them with the original's
rule; segfm's generator is replaced by one replaying them) and the same global seed for the
Boltzmann sampling: the loss and the gradient norm of every parameter group agree within 1e-5.
The forward and per-parameter gradients of the network alone are compared in
tests/benchmarks/test_reference_biomedparse.py.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
import torch

from benchmarks.reference.biomedparse_v2 import reference_tiny
from benchmarks.reference.train_biomedparse import biomedparse_loss_cls, sample_slice_targets
from segfm.methods.biomedparse import BiomedParse, BiomedParseLoss
from segfm.sample import ClassInfo

pytestmark = pytest.mark.filterwarnings(r"ignore:You are trying to `self.log\(\)`")
SIZE = 64
ATOL = 1e-5
DATASETS: list[tuple[dict[str, Any], bool]] = [
    (
        {
            "1": ["Liver", "liver in CT"],
            "2": ["Spleen"],
            "3": ["Left kidney", "kidney L"],
            "4": ["Right kidney"],
            "5": ["Aorta", "aorta in CT"],
            "instance_label": 0,
        },
        False,
    ),
    ({"1": ["Heart"], "2": ["Lung", "lungs"], "3": ["Bone"], "instance_label": 0}, False),
    ({"1": ["Lesion", "PET lesion"], "instance_label": 1}, True),
]
GROUPS = {
    "backbone": ("backbone.",),
    "pixel decoder": ("sem_seg_head.pixel_decoder.",),
    "text encoder": ("sem_seg_head.predictor.language_encoder.",),
    "existence head": ("sem_seg_head.predictor.classifier",),
    "mask decoder": ("sem_seg_head.predictor.",),  # the rest of the predictor
}


class Replay(random.Random):
    """A generator that returns recorded draws (and checks they fit the call)."""

    def __init__(self, answers: list[Any]) -> None:
        super().__init__(0)
        self.answers = answers

    def choice(self, seq: Sequence[Any]) -> Any:
        """The next recorded value, which must be one of ``seq``."""
        value = self.answers.pop(0)
        assert value in seq
        return value

    def sample(self, population: Sequence[Any], k: int, **_: Any) -> list[Any]:  # type: ignore[override]
        """The next recorded draw without replacement."""
        value = list(self.answers.pop(0))
        assert len(value) == k == len(set(value)) and set(value) <= set(population)
        return value


def _labels() -> list[np.ndarray]:
    g = np.random.default_rng(0)
    semantic5 = np.zeros((SIZE, SIZE), np.int64)
    semantic5[8:30, 10:40], semantic5[35:50, 5:20], semantic5[40:60, 40:58] = 1, 2, 3
    semantic3 = np.zeros((SIZE, SIZE), np.int64)
    semantic3[5:25, 5:60], semantic3[30:55, 20:40] = 2, 1
    instance = np.zeros((SIZE, SIZE), np.int64)
    for i, (y, x) in enumerate(g.integers(4, SIZE - 14, (3, 2))):
        instance[y : y + 10, x : x + 10] = i + 1
    return [semantic5, semantic3, instance]


def _draws(seed: int) -> tuple[list[str], torch.Tensor, list[list[Any]]]:
    """The reference's prompts, labels ``[B, P, H, W]`` and, per slice, the draws to replay."""
    np_random, py_random = np.random.RandomState(seed), random.Random(seed)
    texts, labels, replays = [], [], []
    for label, (prompts, instance) in zip(_labels(), DATASETS, strict=True):
        joined, ids, mask = sample_slice_targets(
            label, prompts, int(instance), np_random, py_random
        )
        sentences = joined.split("[SEP]")
        texts += sentences
        labels.append(torch.from_numpy(mask.astype(np.int64)))
        n_classes = len(prompts) - 1
        class_draws: list[Any] = [] if instance else [ids] if n_classes >= 4 else ids
        replays.append(class_draws + sentences)
    return texts, torch.stack(labels), replays


def _batch() -> dict[str, Any]:
    g = torch.Generator().manual_seed(1)
    classes = [
        {int(k): ClassInfo(v[0], tuple(v)) for k, v in p.items() if k != "instance_label"}
        for p, _ in DATASETS
    ]
    return {
        "image": torch.rand(len(DATASETS), 3, SIZE, SIZE, generator=g) * 255,
        "label": torch.stack([torch.from_numpy(x)[None] for x in _labels()]),
        "classes": classes,
        "meta": [{"instance": inst} for _, inst in DATASETS],
    }


def _group_norms(model: torch.nn.Module) -> dict[str, float]:
    squares = dict.fromkeys(GROUPS, 0.0)
    for name, p in model.named_parameters():
        if p.grad is None:
            continue
        group = next(g for g, prefixes in GROUPS.items() if name.startswith(prefixes))
        squares[group] += float(p.grad.double().square().sum())
    return {g: s**0.5 for g, s in squares.items()}


@pytest.fixture(scope="module")
def both() -> dict[str, Any]:
    torch.manual_seed(0)
    method = BiomedParse(arch="tiny", image_size=SIZE, loss=BiomedParseLoss(num_prompts=4))
    ref = reference_tiny(vocab_size=258, context_length=16, drop_path_rate=0.0)
    ref.load_state_dict(method.model.state_dict(), strict=True)
    method.train()
    ref.train()
    texts, labels, replays = _draws(seed=5)
    answers = [a for r in replays for a in r]
    method.prompt_rng = lambda seed: Replay(answers)  # type: ignore[method-assign]
    batch = _batch()
    torch.manual_seed(3)
    loss = method._step(batch, 0, "train")
    loss.backward()
    assert answers == []  # every recorded draw was used

    tokens = method.tokenizer(texts, max_length=16)
    inputs = {"image": batch["image"], "tokens": tokens, "num_prompts": torch.tensor([4, 4, 4])}
    torch.manual_seed(3)
    predictions = ref(inputs, mode="train")["predictions"]
    ref_loss = biomedparse_loss_cls(predictions, labels)
    ref_loss.backward()
    plain = biomedparse_loss_cls(
        {k: v.detach() for k, v in predictions.items()}, labels, antialias=False
    )
    return {
        "method": method,
        "ref": ref,
        "loss": loss.detach(),
        "ref_loss": ref_loss.detach(),
        "plain": plain,
        "labels": labels,
    }


def test_the_batch_has_negatives_repeats_and_instances(both: dict[str, Any]) -> None:
    labels = both["labels"]
    present = labels.flatten(2).amax(2) > 0
    assert (~present[0]).any() and present[0].any()  # absent classes of slice 0 are negatives
    assert present[2].all() and int(labels[2].max()) == 3  # instance ids, every prompt present


def test_loss_agrees_with_the_original(both: dict[str, Any]) -> None:
    torch.testing.assert_close(both["loss"], both["ref_loss"], atol=ATOL, rtol=0)
    # the test notices a 1-line change: without antialias the original's loss is another number
    assert abs(float(both["plain"]) - float(both["ref_loss"])) > 10 * ATOL


def test_gradient_norm_per_group_agrees(both: dict[str, Any]) -> None:
    ours, ref = _group_norms(both["method"].model), _group_norms(both["ref"])
    for group in GROUPS:
        assert ours[group] > 1e-6, group  # every group receives a gradient
        assert ours[group] == pytest.approx(ref[group], abs=ATOL, rel=0), group


# ------------------------------------------------------------- prompt simulation statistics
DRAWS = 3000


def _within(observed: float, p: float, n: int, sigmas: float = 4.5) -> bool:
    return abs(observed - p) <= sigmas * (p * (1 - p) / n) ** 0.5 + 1e-12


@functools.cache
def _method() -> BiomedParse:
    return BiomedParse(arch="tiny", image_size=SIZE)


def _segfm_draws(
    prompts: dict[str, Any], label: np.ndarray, instance: bool, n: int = DRAWS
) -> list[list[Any]]:
    """``n`` slices of segfm's sampling: per slice, (class, prompt, negative) per pair."""
    method = _method()
    classes = {
        int(k): ClassInfo(v[0], tuple(v)) for k, v in prompts.items() if k != "instance_label"
    }
    of_text = {t: int(k) for k, v in prompts.items() if k != "instance_label" for t in v}
    rng, out = random.Random(0), []
    tensor = torch.from_numpy(label)[None]
    for _ in range(n):
        texts, maps = method.sample_prompts(tensor, classes, instance, rng)
        empty = maps.flatten(1).amax(1) == 0
        out.append([(of_text[t], t, bool(e)) for t, e in zip(texts, empty, strict=True)])
    return out


def _reference_draws(prompts: dict[str, Any], label: np.ndarray, instance: bool) -> list[list[Any]]:
    np_random, py_random, out = np.random.RandomState(0), random.Random(0), []
    for _ in range(DRAWS):
        joined, ids, mask = sample_slice_targets(
            label, prompts, int(instance), np_random, py_random
        )
        texts = joined.split("[SEP]")
        out.append([(c, t, not m.any()) for c, t, m in zip(ids, texts, mask, strict=True)])
    return out


def _shares(draws: list[list[Any]]) -> dict[str, float]:
    pairs = [p for slice_ in draws for p in slice_]
    shares = {f"class {c}": sum(p[0] == c for p in pairs) / len(pairs) for c in range(1, 6)}
    shares["negative"] = sum(p[2] for p in pairs) / len(pairs)
    shares["distinct slices"] = sum(len({p[0] for p in s}) == len(s) for s in draws) / len(draws)
    shares["one class"] = sum(len({p[0] for p in s}) == 1 for s in draws) / len(draws)
    return shares


@pytest.mark.parametrize("which", [0, 1], ids=["5 classes", "3 classes"])
def test_semantic_prompt_statistics_follow_the_original_rule(which: int) -> None:
    prompts, _ = DATASETS[which]
    label = _labels()[which]
    ours, theirs = _segfm_draws(prompts, label, False), _reference_draws(prompts, label, False)
    n_classes = len(prompts) - 1
    present = set(np.unique(label).tolist()) - {0}
    # the rule, by hand: 4 distinct of 5 (every class in 4/5 of the slices, never a repeat), or
    # 4 independent uniform draws of 3 (all the same in 3 * (1/3)^4 of the slices)
    expected = {f"class {c}": 1 / n_classes for c in range(1, n_classes + 1)}
    expected["negative"] = 1 - len(present) / n_classes
    expected["distinct slices"] = 1.0 if n_classes >= 4 else 0.0
    expected["one class"] = 0.0 if n_classes >= 4 else n_classes * (1 / n_classes) ** 4
    for source in (_shares(ours), _shares(theirs)):
        for key, p in expected.items():
            n = DRAWS * (4 if key.startswith(("class", "negative")) else 1)
            assert _within(source[key], p, n), (key, source[key], p)
    # each class's prompts are drawn uniformly
    pairs = [p for s in ours for p in s]
    for c, texts in ((int(k), v) for k, v in prompts.items() if k != "instance_label"):
        of_c = [p[1] for p in pairs if p[0] == c]
        for t in texts:
            assert _within(of_c.count(t) / len(of_c), 1 / len(texts), len(of_c)), t


def test_instance_prompts_and_the_semantic_instance_share() -> None:
    prompts, _ = DATASETS[2]
    label = _labels()[2]
    for draws in (_segfm_draws(prompts, label, True), _reference_draws(prompts, label, True)):
        assert all([p[0] for p in s] == [1] * 4 and not any(p[2] for p in s) for s in draws[:50])
        shares = _shares(draws)
        texts = [p[1] for s in draws for p in s]
        assert _within(texts.count("Lesion") / len(texts), 0.5, len(texts))
        assert shares["negative"] == 0.0
    # an empty instance slice: all four prompts are negatives (existence only)
    empty = _segfm_draws(prompts, np.zeros_like(label), True, n=10)
    assert all(p[2] for s in empty for p in s)
    # every slice, semantic or instance, gives num_prompts pairs (as the original's items), so
    # a batch's share of instance prompts is its share of instance slices
    for which, instance in ((0, False), (1, False), (2, True)):
        draws = _segfm_draws(DATASETS[which][0], _labels()[which], instance, n=20)
        assert all(len(s) == 4 for s in draws)
