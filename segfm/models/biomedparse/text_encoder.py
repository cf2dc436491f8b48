"""The text encoder of BiomedParse: SEEM's CLIP-style causal transformer and its projection.

A 12-layer, width-512 transformer over 77 CLIP BPE tokens (causal mask, QuickGELU, TF-style
LayerNorm with eps 1e-12, as X-Decoder's ``LangEncoder/transformer.py``). Every token's output is
projected by ``lang_proj``; BiomedParse's mask decoder attends to the projected tokens of the
prompt (its ``attention_mask`` positions), and the end-of-text token's projection is the
prompt's class embedding. The tokenizer is ``openai/clip-vit-base-patch32``'s, read by
``transformers`` from a local folder only (:func:`load_tokenizer`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn


def load_tokenizer(path: str | os.PathLike[str]) -> Any:
    """Read the CLIP tokenizer from a local folder (never downloads).

    Args:
        path: Folder holding ``vocab.json`` and ``merges.txt`` (e.g. a saved copy of
            ``openai/clip-vit-base-patch32``'s tokenizer).

    Returns:
        A ``transformers.CLIPTokenizer`` (the slow one, as the original's ``use_fast: false``).

    Raises:
        FileNotFoundError: If the folder or its files are missing.
    """
    from transformers import CLIPTokenizer

    folder = Path(path)
    missing = [n for n in ("vocab.json", "merges.txt") if not (folder / n).is_file()]
    if missing:
        msg = (
            f"{folder}: no CLIP tokenizer there (missing {missing}); save one with "
            "CLIPTokenizer.from_pretrained('openai/clip-vit-base-patch32').save_pretrained(DIR) "
            "on a machine with network access and pass DIR"
        )
        raise FileNotFoundError(msg)
    return CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)


class QuickGELU(nn.Module):
    """CLIP's ``x * sigmoid(1.702 x)``."""

    def forward(self, x: Tensor) -> Tensor:
        """Apply the activation."""
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    """Pre-norm causal self-attention block (``attn``, ``ln_1``, ``mlp.c_fc/c_proj``, ``ln_2``)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1 = nn.LayerNorm(width, eps=1e-12)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(width, 4 * width))
        self.mlp.add_module("gelu", QuickGELU())
        self.mlp.add_module("c_proj", nn.Linear(4 * width, width))
        self.ln_2 = nn.LayerNorm(width, eps=1e-12)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """Tokens ``[L, N, C]`` with an additive causal mask ``[L, L]``."""
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=mask)[0]
        return x + self.mlp(self.ln_2(x))


class LanguageTransformer(nn.Module):
    """Token and position embeddings, causal blocks and a final LayerNorm.

    Args:
        context_length: Tokens per prompt (77 for CLIP).
        vocab_size: Tokenizer vocabulary (49408 for CLIP).
        width: Token width.
        layers: Blocks.
        heads: Attention heads.
    """

    def __init__(
        self, context_length: int, vocab_size: int, width: int, layers: int, heads: int
    ) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.zeros(context_length, width))
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(width, heads) for _ in range(layers))
        self.ln_final = nn.LayerNorm(width, eps=1e-12)
        nn.init.trunc_normal_(self.positional_embedding, std=0.02)
        nn.init.trunc_normal_(self.token_embedding.weight, std=0.02)

    def forward(self, input_ids: Tensor) -> Tensor:
        """Token ids ``[N, L]`` to token features ``[N, L, width]``."""
        n = input_ids.shape[1]
        x = self.token_embedding(input_ids) + self.positional_embedding[:n]
        mask = torch.full((n, n), float("-inf"), device=x.device, dtype=x.dtype).triu_(1)
        x = x.transpose(0, 1)
        for block in self.resblocks:
            x = block(x, mask)
        return self.ln_final(x.transpose(0, 1))


class TextEncoder(nn.Module):
    """SEEM's language encoder: the transformer, ``lang_proj`` and ``logit_scale``.

    Args:
        context_length: Tokens per prompt.
        vocab_size: Tokenizer vocabulary.
        width: Transformer width.
        layers: Transformer blocks.
        heads: Attention heads.
        dim_proj: Width of the projected tokens.
    """

    def __init__(
        self,
        context_length: int = 77,
        vocab_size: int = 49408,
        width: int = 512,
        layers: int = 12,
        heads: int = 8,
        dim_proj: int = 512,
    ) -> None:
        super().__init__()
        if width % heads:
            msg = f"width ({width}) must be divisible by heads ({heads})"
            raise ValueError(msg)
        self.context_length = context_length
        self.lang_proj = nn.Parameter(torch.empty(width, dim_proj))
        self.logit_scale = nn.Parameter(torch.ones([]))
        self.encoder_transformer = LanguageTransformer(
            context_length, vocab_size, width, layers, heads
        )
        nn.init.trunc_normal_(self.lang_proj, std=0.02)

    def tokenize(self, tokenizer: Any, texts: list[str]) -> tuple[Tensor, Tensor]:
        """CLIP token ids and attention masks, padded to ``context_length``.

        Returns:
            ``input_ids`` and ``attention_mask``, each ``[N, context_length]`` (int64).
        """
        out = tokenizer(
            texts,
            padding="max_length",
            truncation=True,
            max_length=self.context_length,
            return_tensors="pt",
        )
        return out["input_ids"], out["attention_mask"]

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
        """Encode prompts.

        Args:
            input_ids: Token ids ``[N, L]``; the end-of-text token has the largest id.
            attention_mask: 1 on the prompt's tokens ``[N, L]``.

        Returns:
            Grounding tokens ``[T, N, dim_proj]`` (each prompt's own tokens, zero-padded to the
            longest prompt ``T``; the padding is attended to, as in the original) and class
            embeddings ``[N, dim_proj]``.
        """
        tokens = self.encoder_transformer(input_ids) @ self.lang_proj
        eot = input_ids.argmax(dim=-1)
        class_emb = tokens[torch.arange(tokens.shape[0], device=tokens.device), eot]
        keep = attention_mask.bool()
        length = int(keep.sum(1).max())
        # gather each prompt's tokens to the front, zeros after them
        order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)[:, :length]
        gathered = torch.gather(tokens, 1, order[..., None].expand(-1, -1, tokens.shape[-1]))
        valid = torch.gather(keep, 1, order)
        grounding = gathered * valid[..., None]
        return grounding.transpose(0, 1), class_emb
