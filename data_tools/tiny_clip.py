"""A tiny CLIP tokenizer and text config written to a folder, for demos and tests (no download).

    python -m data_tools.tiny_clip --output DIR

Real runs use the tokenizer shipped with the released weights (SegVol's ``config/clip``).
"""

from __future__ import annotations

import argparse
import json
import string
from pathlib import Path

from segfm.models.segvol import tiny_text_config

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def write_tiny_clip(folder: Path) -> Path:
    """Write vocab.json, merges.txt, tokenizer and text-model configs of a character-level CLIP.

    Every lower-case letter, digit and punctuation mark is a token, alone and as a word end
    (``a</w>``); a few merges join frequent pairs, so the BPE path is exercised too.

    Args:
        folder: Destination (created).

    Returns:
        ``folder``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    chars = string.ascii_lowercase + string.digits + ".,-_'"
    merges = [("t", "h"), ("o", "f</w>"), ("a", "l")]
    tokens = [*chars, *(c + "</w>" for c in chars), *("".join(m) for m in merges), BOS, EOS]
    vocab = {t: i for i, t in enumerate(tokens)}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    lines = ["#version: 0.2", *(" ".join(m) for m in merges)]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n")
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}
    (folder / "special_tokens_map.json").write_text(json.dumps(special))
    tok_config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, **special}
    (folder / "tokenizer_config.json").write_text(json.dumps(tok_config))
    config = tiny_text_config(vocab_size=len(vocab))
    config.bos_token_id, config.eos_token_id, config.pad_token_id = (
        vocab[BOS],
        vocab[EOS],
        vocab[EOS],
    )
    config.save_pretrained(str(folder))
    return folder


def main(argv: list[str] | None = None) -> None:
    """Command line: write the tiny tokenizer and config into ``--output``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True, type=Path, help="folder to write")
    args = parser.parse_args(argv)
    print(write_tiny_clip(args.output))


if __name__ == "__main__":
    main()
