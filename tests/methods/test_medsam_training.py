"""MedSAM's training step against the original's (bowang-lab/MedSAM @d71e8a1, ``train_one_gpu.py``).

The reference (``benchmarks/reference/train_medsam.py``) follows the original's box rule
(``NpyDataset.__getitem__``, lines 94-108), its forward pass (``MedSAM.forward``, lines
222-248), its loss (lines 284-286, 333) and its optimiser's parameters (lines 274-279), on
segment-anything's own network with segfm's weights. Both get the same label and box draws.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks.reference.train_medsam import MedSAMReference, training_loss
from segfm.methods import MedSAM
from segfm.methods.medsam import BoxPrompts
from segfm.models.build_sam import tiny_config
from segfm.prompts import masks_to_boxes
from tests.official import official_sam, randomize_

SIZE = 32


def _labels(generator: torch.Generator, n: int = 3) -> torch.Tensor:
    """Label slices ``[n, 1, SIZE, SIZE]`` with two or three rectangles each, some at the edge."""
    label = torch.zeros(n, 1, SIZE, SIZE, dtype=torch.long)
    for b in range(n):
        for c in range(1, 2 + b % 2 + 1):
            y0, x0 = torch.randint(0, SIZE - 6, (2,), generator=generator).tolist()
            h, w = torch.randint(3, 12, (2,), generator=generator).tolist()
            label[b, 0, y0 : y0 + h, x0 : x0 + w] = c
    label[0, 0, 0:4, 0:5] = 1  # a target touching the corner: its box is clamped
    return label


def _pair(seed: int = 0) -> tuple[MedSAM, MedSAMReference]:
    torch.manual_seed(seed)
    method = MedSAM(
        arch="tiny", image_size=SIZE, train_prompts=BoxPrompts(box_shift=5, targets_per_image=1)
    )
    sam = randomize_(official_sam(image_size=SIZE, **tiny_config(2)), seed=seed + 1)
    method.model.load_state_dict(sam.state_dict())
    return method, MedSAMReference(sam.train())


def _draws(method: MedSAM, label: torch.Tensor) -> tuple[list[int], list[list[int]]]:
    """The label and side shifts segfm draws next from the global generator."""
    targets, boxes, index = method.sample_targets(label[:, 0])
    assert index.tolist() == list(range(label.shape[0]))  # one target per slice
    tight = masks_to_boxes(targets)
    choices = [int(label[i, 0][targets[i].bool()][0]) for i in range(len(targets))]
    shifts = torch.stack(
        [tight[:, 0] - boxes[:, 0], boxes[:, 2] - tight[:, 2], tight[:, 1] - boxes[:, 1],
         boxes[:, 3] - tight[:, 3]],
        dim=1,
    )  # fmt: skip
    return choices, shifts.round().long().tolist()


def _group_norms(modules: dict[str, torch.nn.Module]) -> dict[str, float]:
    out = {}
    for name, module in modules.items():
        grads = [p.grad.flatten() for p in module.parameters() if p.grad is not None]
        out[name] = float(torch.cat(grads).norm()) if grads else 0.0
    return out


@pytest.mark.parametrize("seed", [0, 1])
def test_training_step_equals_the_original(seed: int) -> None:
    method, reference = _pair(seed)
    generator = torch.Generator().manual_seed(seed)
    label = _labels(generator)
    batch = {
        "image": torch.rand(label.shape[0], 3, SIZE, SIZE, generator=generator),
        "label": label,
    }
    torch.manual_seed(100 + seed)
    choices, shifts = _draws(method, label)
    torch.manual_seed(100 + seed)
    loss = method.training_step(batch, 0)
    loss.backward()
    ref_loss = training_loss(reference, batch["image"], label[:, 0].numpy(), choices, shifts)
    ref_loss.backward()
    assert float(loss) == pytest.approx(float(ref_loss), abs=1e-5)
    ours = _group_norms(
        {
            "image_encoder": method.model.image_encoder,
            "prompt_encoder": method.model.prompt_encoder,
            "mask_decoder": method.model.mask_decoder,
        }
    )
    theirs = _group_norms(
        {
            "image_encoder": reference.image_encoder,
            "prompt_encoder": reference.prompt_encoder,
            "mask_decoder": reference.mask_decoder,
        }
    )
    assert ours["prompt_encoder"] == theirs["prompt_encoder"] == 0.0  # frozen in both
    for name in ("image_encoder", "mask_decoder"):
        assert ours[name] > 0
        assert ours[name] == pytest.approx(theirs[name], rel=1e-5, abs=1e-5), name


def test_optimiser_trains_what_the_original_trains() -> None:
    method, reference = _pair()
    ours = method.configure_optimizers()
    theirs = reference.optimizer()
    assert type(ours) is type(theirs)  # AdamW, no schedule (MedSAM's recipe is constant)
    ours_params = {id(p) for g in ours.param_groups for p in g["params"]}
    names = {id(p): n for n, p in method.model.named_parameters()}
    trained = {names[i].split(".")[0] for i in ours_params}
    assert trained == {"image_encoder", "mask_decoder"}
    assert len(ours_params) == sum(len(g["params"]) for g in theirs.param_groups)
    assert ours.defaults["lr"] == theirs.defaults["lr"] == 1e-4
    assert ours.defaults["weight_decay"] == theirs.defaults["weight_decay"] == 0.01


def test_box_jitter_statistics_follow_randint_per_side() -> None:
    """Each side moves out by randint(0, shift) independently; the label is a uniform choice."""
    shift, draws = 4, 4000
    method = MedSAM(arch="tiny", image_size=SIZE, train_prompts=BoxPrompts(box_shift=shift))
    label = torch.zeros(1, SIZE, SIZE, dtype=torch.long)
    label[0, 10:20, 8:22] = 1
    label[0, 5:9, 20:26] = 2
    label[0, 22:26, 10:17] = 3
    generator = torch.Generator().manual_seed(0)
    counts = np.zeros((4, shift + 1))
    chosen = np.zeros(4)
    pair = np.zeros((shift + 1, shift + 1))
    for _ in range(draws):
        targets, boxes, _ = method.sample_targets(label, generator)
        tight = masks_to_boxes(targets)[0]
        moved = (tight - boxes[0]) * torch.tensor([1.0, 1.0, -1.0, -1.0])
        moved = moved.round().long().tolist()
        for side, value in enumerate(moved):
            counts[side, value] += 1
        pair[moved[0], moved[2]] += 1
        chosen[int(label[0][targets[0].bool()][0])] += 1
    expected = draws / (shift + 1)
    # chi-square with 4 degrees of freedom: 18.47 is its 0.999 quantile
    for side in range(4):
        chi2 = float(((counts[side] - expected) ** 2 / expected).sum())
        assert chi2 < 18.47, (side, counts[side])
    # independence of two sides: 16 degrees of freedom, 0.999 quantile 39.25
    cell = draws / (shift + 1) ** 2
    assert float(((pair - cell) ** 2 / cell).sum()) < 39.25
    # the label: uniform over the three present (2 degrees of freedom, 0.999 quantile 13.82)
    assert float(((chosen[1:] - draws / 3) ** 2 / (draws / 3)).sum()) < 13.82


def test_overfits_one_slice() -> None:
    """A tiny MedSAM learns one generated slice from its box: DSC >= 0.90 within 40 steps."""
    torch.manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    mask = ((yy - 15) ** 2 / 49 + (xx - 17) ** 2 / 81) <= 1
    noise = torch.rand(SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    image = 0.3 + 0.4 * mask.float() + 0.1 * noise
    batch = {"image": image.expand(1, 3, SIZE, SIZE).clone(), "label": mask.long()[None, None]}
    method = MedSAM(arch="tiny", image_size=SIZE, train_prompts=BoxPrompts(box_shift=2), lr=1e-3)
    optimizer = method.configure_optimizers()
    for step in range(40):
        loss = method.training_step(batch, step)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        embeddings = method.model.encode(batch["image"])
        logits, _ = method.model.decode(
            embeddings, boxes=masks_to_boxes(mask[None]), multimask_output=False
        )
        logits = torch.nn.functional.interpolate(logits, size=(SIZE, SIZE), mode="bilinear")
    pred = logits[0, 0] > 0
    dsc = 2 * float((pred & mask).sum()) / float(pred.sum() + mask.sum())
    assert dsc >= 0.90
