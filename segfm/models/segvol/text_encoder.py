"""SegVol's text encoder: CLIP's text transformer and a linear map to the prompt width."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import AutoTokenizer, CLIPTextConfig, CLIPTextModel

from segfm.errors import ConfigError

#: SegVol's prompt template for a class name
TEMPLATE = "A computerized tomography of a {}."


class TextEncoder(nn.Module):
    """Embed class names as prompt tokens (SegVol's ``TextEncoder``, same parameter names).

    The CLIP text model is built from its configuration (the released SegVol checkpoint carries
    its weights; SegVol's default ``CLIPTextConfig()`` is CLIP ViT-B/32's text tower) and frozen.
    The tokenizer is read from a local folder (``from_pretrained(clip_dir)``; nothing is
    downloaded) the first time text is encoded, so a network without ``clip_dir`` works with
    points and boxes.

    Compatibility quirk of the released weights: SegVol encodes text under ``torch.no_grad()``,
    so ``dim_align`` never received a gradient and stayed at its random initialisation. It is
    frozen here too (with the CLIP model) so that fine-tuning keeps the text tokens the decoder
    was trained with.

    Args:
        config: Configuration of the CLIP text model.
        out_dim: Width of the prompt tokens (768 for SegVol).
        clip_dir: Folder with the CLIP tokenizer files (SegVol's ``config/clip``), or None.
        template: Format string turning a class name into a sentence.
    """

    def __init__(
        self,
        config: CLIPTextConfig,
        out_dim: int,
        clip_dir: str | os.PathLike[str] | None = None,
        template: str = TEMPLATE,
    ) -> None:
        super().__init__()
        if out_dim <= 0:
            msg = f"out_dim must be positive, got {out_dim}"
            raise ValueError(msg)
        if "{}" not in template:
            msg = f"template must contain '{{}}' for the class name, got {template!r}"
            raise ValueError(msg)
        self.clip_text_model = _text_model_holder(CLIPTextModel(config))
        self.config = config
        self.dim_align = nn.Linear(config.hidden_size, out_dim)
        self.requires_grad_(False)
        self.clip_dir = None if clip_dir is None else Path(clip_dir)
        self.template = template
        self._tokenizer: Any = None

    @property
    def tokenizer(self) -> Any:
        """The CLIP tokenizer read from ``clip_dir`` (loaded once)."""
        if self._tokenizer is None:
            if self.clip_dir is None:
                msg = (
                    "text prompts need the CLIP tokenizer files; set --model.init_args.clip_dir "
                    "to a local folder holding them (SegVol's config/clip)"
                )
                raise ConfigError(msg)
            if not self.clip_dir.is_dir():
                msg = (
                    f"{self.clip_dir}: no such folder; clip_dir must hold the CLIP tokenizer files"
                )
                raise ConfigError(msg)
            self._tokenizer = AutoTokenizer.from_pretrained(str(self.clip_dir))
        return self._tokenizer

    def train(self, mode: bool = True) -> TextEncoder:
        """Keep the frozen text model in evaluation mode."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, names: Sequence[str]) -> Tensor:
        """Embed class names.

        Args:
            names: ``N`` class names (or descriptions), each put into the template.

        Returns:
            Text tokens ``[N, out_dim]``.
        """
        if isinstance(names, str):
            names = [names]
        device = self.dim_align.weight.device
        tokens = self.tokenizer(
            [self.template.format(name) for name in names],
            padding=True,
            truncation=True,
            max_length=self.config.max_position_embeddings,
            return_tensors="pt",
        )
        tokens = {
            k: v.to(device) for k, v in tokens.items() if k in ("input_ids", "attention_mask")
        }
        pooled = self.clip_text_model.text_model(**tokens).pooler_output  # [N, hidden]
        return self.dim_align(pooled)


def _text_model_holder(model: CLIPTextModel) -> nn.Module:
    """A module whose ``text_model`` child is CLIP's text transformer, whatever the version.

    SegVol's keys are ``clip_text_model.text_model.<...>``: in transformers 4, ``CLIPTextModel``
    wraps a ``text_model``; transformers 5 flattened it (``CLIPTextModel.embeddings``...). A
    plain holder module restores the released names without copying any weights.
    """
    if hasattr(model, "text_model"):
        return model
    holder = nn.Module()
    holder.text_model = model
    return holder
