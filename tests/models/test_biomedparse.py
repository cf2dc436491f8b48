"""BiomedParse v2 network: official names and shapes, tiny forward, deterministic sampling."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from segfm.models.biomedparse import (
    BoltzFormerTextDecoder,
    TextEncoder,
    biomedparse_tiny,
    biomedparse_v2,
    boltzmann_mask,
    build_biomedparse,
    load_tokenizer,
)

REFERENCE = Path(__file__).resolve().parents[1] / "data" / "biomedparse" / "official_params.txt"


def _reference() -> dict[str, tuple[int, ...]]:
    out = {}
    for line in REFERENCE.read_text().splitlines():
        if line.startswith("#"):
            continue
        name, _, shape = line.partition(" ")
        out[name] = tuple(int(s) for s in shape.split(",")) if shape else ()
    return out


def test_reference_names_commit() -> None:
    assert "f571d5ccaa4f8c0479bb89e390a7ef0dfc0736f4" in REFERENCE.read_text().splitlines()[1]


def test_v2_matches_official_names_and_shapes() -> None:
    with torch.device("meta"):
        model = biomedparse_v2()
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    ref = _reference()
    assert len(ref) == 1050
    assert sorted(set(ref) - set(ours)) == [] and sorted(set(ours) - set(ref)) == []
    assert {k: v for k, v in ours.items() if ref[k] != v} == {}
    assert list(ours) == list(ref)  # same order too


def _inputs(n_prompts: list[int], vocab: int = 50, length: int = 16):
    g = torch.Generator().manual_seed(0)
    n = sum(n_prompts)
    ids = torch.randint(0, vocab - 1, (n, length), generator=g)
    ids[:, 6] = vocab - 1  # end of text: the largest id
    mask = torch.zeros(n, length, dtype=torch.long)
    mask[:, :7] = 1
    mask[0, :4] = 1
    mask[0, 4:] = 0
    ids[0, 3] = vocab - 1
    return ids, mask


def test_tiny_forward_shapes() -> None:
    model = biomedparse_tiny(vocab_size=50).eval()
    images = torch.rand(2, 3, 64, 64) * 255
    ids, mask = _inputs([3, 1])
    out = model(images, ids, mask, [3, 1], torch.Generator().manual_seed(0))
    assert out.masks.shape == (4, 1, 16, 16)
    assert out.edges is not None and out.edges.shape == (4, 1, 16, 16)
    assert out.existence.shape == (4, 1)
    assert torch.isfinite(out.masks).all() and torch.isfinite(out.existence).all()


def test_decode_many_prompts_on_shared_features() -> None:
    model = biomedparse_tiny(vocab_size=50).eval()
    model.sem_seg_head.predictor.boltzmann = False
    images = torch.rand(2, 3, 64, 64) * 255
    ids, mask = _inputs([2, 2])
    features = model.encode_image(images)
    text = model.encode_text(ids, mask)
    both = model.decode(features, text, [2, 2])
    # the second image alone with its two prompts gives the same logits
    single = model.decode(
        type(features)(features.mask_features[1:], [f[1:] for f in features.multi_scale]),
        model.encode_text(ids[2:], mask[2:]),
        [2],
    )
    torch.testing.assert_close(both.masks[2:], single.masks, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="num_prompts"):
        model.decode(features, text, [1, 2])


def test_text_tokens_zero_padded_to_longest_prompt() -> None:
    enc = TextEncoder(context_length=8, vocab_size=20, width=16, layers=1, heads=2, dim_proj=16)
    ids = torch.tensor([[18, 3, 19, 19, 19, 19, 19, 19], [18, 4, 5, 6, 19, 19, 19, 19]])
    mask = (torch.arange(8) < torch.tensor([[3], [5]])).long()
    tokens, cls = enc(ids, mask)
    assert tokens.shape == (5, 2, 16) and cls.shape == (2, 16)
    assert torch.equal(tokens[3:, 0], torch.zeros(2, 16))
    assert tokens[:3, 0].abs().sum() > 0 and tokens[:, 1].abs().sum(-1).min() > 0
    # class embedding = the end-of-text token (first largest id)
    torch.testing.assert_close(cls[1], tokens[4, 1])


def test_boltzmann_sampling_seeded_and_rule() -> None:
    probs = torch.rand(4, 6, 100, generator=torch.Generator().manual_seed(1))
    a = boltzmann_mask(probs, 0, 1.1, 0.1, 1.0, torch.Generator().manual_seed(5))
    b = boltzmann_mask(probs, 0, 1.1, 0.1, 1.0, torch.Generator().manual_seed(5))
    c = boltzmann_mask(probs, 0, 1.1, 0.1, 1.0, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    # each token shown with probability 1 - (1 - w)^10, which sums to at most 10 per row
    shown = (~a).sum(-1).float()
    assert shown.mean() <= 10 and shown.min() >= 1 and shown.max() < 30
    # above the threshold always shown; a near-certain token is drawn
    p = torch.zeros(1, 1, 50)
    p[..., 7] = 1.0
    m = boltzmann_mask(p, 8, 0.5, 0.1, 1.0, torch.Generator().manual_seed(0))
    assert not m[0, 0, 7]
    p2 = torch.full((1, 1, 50), 0.01)
    p2[..., 3] = 0.9
    m2 = boltzmann_mask(p2, 8, 1.1, 0.1, 1.0, torch.Generator().manual_seed(0))
    assert not m2[0, 0, 3]  # exp(0.9 * 10) dominates: drawn


def test_decoder_deterministic_with_generator() -> None:
    model = biomedparse_tiny(vocab_size=50).eval()
    images = torch.rand(1, 3, 64, 64) * 255
    ids, mask = _inputs([2])
    runs = [model(images, ids, mask, [2], torch.Generator().manual_seed(s)) for s in (3, 3, 4)]
    torch.testing.assert_close(runs[0].masks, runs[1].masks)
    assert not torch.equal(runs[0].masks, runs[2].masks)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown BiomedParse arch"):
        build_biomedparse("huge")
    enc = TextEncoder(8, 20, 16, 1, 2, 16)
    with pytest.raises(ValueError, match="divisible"):
        BoltzFormerTextDecoder(enc, hidden_dim=30, heads=4)
    with pytest.raises(FileNotFoundError, match="no CLIP tokenizer"):
        load_tokenizer("/nonexistent/clip")


def write_clip_tokenizer(folder: Path) -> Path:
    """A tiny CLIP BPE tokenizer (characters only) written to ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    chars = "abcdefghijklmnopqrstuvwxyz"
    vocab = {c: i for i, c in enumerate(chars)}
    vocab |= {c + "</w>": len(chars) + i for i, c in enumerate(chars)}
    vocab |= {"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return folder


def test_local_clip_tokenizer(tmp_path: Path) -> None:
    tok = load_tokenizer(write_clip_tokenizer(tmp_path / "clip"))
    enc = TextEncoder(context_length=12, vocab_size=len(tok), width=16, layers=1, heads=2)
    ids, mask = enc.tokenize(tok, ["liver", "a b"])
    assert ids.shape == (2, 12)
    assert mask.sum(1).tolist() == [7, 4]  # start + 5 letters + end; start + 2 + end
    assert ids[0].argmax() == 6  # the first end-of-text token
