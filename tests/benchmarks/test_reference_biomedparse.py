"""The BiomedParse v2 reference (benchmarks/reference/biomedparse_v2.py) against segfm's network.

The reference follows the original's code; its names, shapes and order are checked against the
list dumped from the official classes, then segfm's weights are loaded into it and both run on
the same inputs with the same global seed (the Boltzmann sampling draws from it in both).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from benchmarks.reference.biomedparse_v2 import CLASSES, build_reference, reference_tiny
from segfm.models.biomedparse import biomedparse_tiny

OFFICIAL = Path(__file__).resolve().parents[1] / "data" / "biomedparse" / "official_params.txt"
VOCAB, LENGTH = 50, 16
ATOL = 1e-5


def _official() -> list[tuple[str, tuple[int, ...]]]:
    rows = []
    for line in OFFICIAL.read_text().splitlines():
        if not line.startswith("#"):
            name, _, shape = line.partition(" ")
            rows.append((name, tuple(int(s) for s in shape.split(",")) if shape else ()))
    return rows


def _pair(drop_path_rate: float = 0.3):
    torch.manual_seed(0)
    ours = biomedparse_tiny(vocab_size=VOCAB, context_length=LENGTH)
    ref = reference_tiny(vocab_size=VOCAB, context_length=LENGTH, drop_path_rate=drop_path_rate)
    ref.load_state_dict(ours.state_dict(), strict=True)
    return ours, ref


def _inputs(counts: list[int]):
    g = torch.Generator().manual_seed(1)
    n = sum(counts)
    images = torch.rand(len(counts), 3, 64, 64, generator=g) * 255
    ids = torch.randint(0, VOCAB - 1, (n, LENGTH), generator=g)
    mask = torch.zeros(n, LENGTH, dtype=torch.long)
    for i in range(n):
        end = 3 + i % 5  # prompts of different lengths: padding matters
        ids[i, end] = VOCAB - 1  # end of text, the largest id (CLIP)
        mask[i, : end + 1] = 1
    return images, ids, mask


def _ref_inputs(images, ids, mask, counts, **extra):
    tokens = {"input_ids": ids, "attention_mask": mask}
    return {"image": images, "tokens": tokens, "num_prompts": torch.tensor(counts), **extra}


def _class_tokens(templates: int):
    g = torch.Generator().manual_seed(2)
    out = []
    for _ in CLASSES:
        ids = torch.randint(0, VOCAB - 1, (templates, LENGTH), generator=g)
        ids[:, 5] = VOCAB - 1
        mask = torch.zeros_like(ids)
        mask[:, :6] = 1
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


def test_reference_v2_has_the_official_names_shapes_and_order() -> None:
    with torch.device("meta"):
        ref = build_reference()
    rows = [(k, tuple(v.shape)) for k, v in ref.state_dict().items()]
    assert len(rows) == 1050
    assert rows == _official()


@pytest.mark.parametrize("counts", [[2, 2], [3, 1]], ids=["tiled", "repeat_interleave"])
def test_eval_forward_agrees_with_segfm(counts: list[int]) -> None:
    ours, ref = _pair()
    ours.eval()
    ref.eval()
    images, ids, mask = _inputs(counts)
    with torch.no_grad():
        torch.manual_seed(7)
        a = ours(images, ids, mask, counts)
        torch.manual_seed(7)
        b = ref(_ref_inputs(images, ids, mask, counts), mode="eval")["predictions"]
    assert b["pred_gmasks"].shape == a.masks.shape == (4, 1, 16, 16)
    assert a.masks.abs().max() > 0.1  # not trivially equal
    torch.testing.assert_close(b["pred_gmasks"], a.masks, atol=ATOL, rtol=0)
    torch.testing.assert_close(b["edge_masks"], a.edges, atol=ATOL, rtol=0)
    torch.testing.assert_close(b["object_existence"], a.existence, atol=ATOL, rtol=0)


def test_the_sampling_seed_matters_in_eval() -> None:
    """The original samples at inference too: another seed gives other masks, in both."""
    ours, ref = _pair()
    ours.eval()
    ref.eval()
    images, ids, mask = _inputs([2, 2])
    refs, segfm = [], []
    with torch.no_grad():
        for seed in (7, 8):
            torch.manual_seed(seed)
            refs.append(ref(_ref_inputs(images, ids, mask, [2, 2]))["predictions"]["pred_gmasks"])
            torch.manual_seed(seed)
            segfm.append(ours(images, ids, mask, [2, 2]).masks)
    assert (refs[0] - refs[1]).abs().max() > 1e-4
    assert (segfm[0] - segfm[1]).abs().max() > 1e-4


def test_train_forward_and_gradients_agree_without_drop_path() -> None:
    ours, ref = _pair(drop_path_rate=0.0)
    ours.train()
    ref.train()
    counts = [2, 2]
    images, ids, mask = _inputs(counts)
    target = torch.zeros(4, 1, 16, 16)
    target[..., 4:12, 5:10] = 1

    def loss(masks, edges, existence):
        bce = torch.nn.functional.binary_cross_entropy_with_logits
        return bce(masks, target) + bce(edges, target) + existence.square().mean()

    torch.manual_seed(3)
    a = ours(images, ids, mask, counts)
    loss(a.masks, a.edges, a.existence).backward()
    torch.manual_seed(3)
    b = ref(_ref_inputs(images, ids, mask, counts), mode="train")["predictions"]
    loss(b["pred_gmasks"], b["edge_masks"], b["object_existence"]).backward()
    torch.testing.assert_close(b["pred_gmasks"], a.masks, atol=ATOL, rtol=0)
    ref_params = dict(ref.named_parameters())
    checked = 0
    for name, p in ours.named_parameters():
        q = ref_params[name]
        assert (p.grad is None) == (q.grad is None), name
        if p.grad is not None:
            torch.testing.assert_close(q.grad, p.grad, atol=ATOL, rtol=1e-4, msg=name)
            checked += 1
    assert checked > 100


def test_class_name_embeddings_change_no_output() -> None:
    """The original's per-call class-name embeddings are computed but never used."""
    _, ref = _pair()
    ref.eval()
    images, ids, mask = _inputs([2, 2])
    outs = []
    for extra in ({}, {"class_tokens": _class_tokens(templates=3)}):
        torch.manual_seed(7)
        outs.append(ref(_ref_inputs(images, ids, mask, [2, 2], **extra))["predictions"])
    stored = ref.sem_seg_head.predictor.language_encoder.default_text_embeddings
    assert stored.shape == (len(CLASSES), 32)
    torch.testing.assert_close(stored.norm(dim=-1), torch.ones(len(CLASSES)))
    for key in ("pred_gmasks", "edge_masks", "object_existence"):
        assert torch.equal(outs[0][key], outs[1][key])


def test_strict_load_rejects_a_missing_or_renamed_key() -> None:
    ours, _ = _pair()
    state = ours.state_dict()
    ref = reference_tiny(vocab_size=VOCAB, context_length=LENGTH)
    missing = {k: v for k, v in state.items() if k != "sem_seg_head.predictor.class_embed"}
    with pytest.raises(RuntimeError, match="Missing key"):
        ref.load_state_dict(missing, strict=True)
    renamed = dict(state)
    renamed["sem_seg_head.predictor.query_feat.weight"] = renamed.pop(
        "sem_seg_head.predictor.query_feat_.weight"
    )
    with pytest.raises(RuntimeError, match="Unexpected key"):
        ref.load_state_dict(renamed, strict=True)
