"""Attention with decomposed relative-position bias (MViTv2), for any number of spatial axes.

Follows SAM's ``add_decomposed_rel_pos``, itself from
https://github.com/facebookresearch/mvit/blob/19786631e330df9f3622e5402b4a419a263a2c80/mvit/models/attention.py
The bias is added to the attention logits as a float mask of
:func:`torch.nn.functional.scaled_dot_product_attention`, except on CPU when the bias needs a
gradient: there SDPA has no fused kernel for it and its math fallback is slower than the
explicit computation used instead.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

#: largest relative-position bias (elements) built at once without gradients (1 GiB in fp32)
MASK_CHUNK_ELEMENTS = 2**28
_AXES = "ijl"  # einsum letters of the query's spatial axes (at most 3)

RelPosStyle = Literal["decomposed", "sam_med3d"]


def relative_table(table: Tensor, size: int) -> Tensor:
    """Look up the embedding of every (query, key) offset along one axis.

    Args:
        table: Embeddings ``[2 * size - 1, C]`` of the offsets ``-(size-1) .. size-1``.
        size: Number of positions along the axis.

    Returns:
        ``[size, size, C]``; entry ``[i, j]`` is the embedding of offset ``i - j``.
    """
    if table.shape[0] != 2 * size - 1:
        rows, expected = table.shape[0], 2 * size - 1
        msg = f"relative position table has {rows} rows, expected {expected} for {size} positions"
        raise ValueError(msg)
    pos = torch.arange(size, device=table.device)
    return table[pos[:, None] - pos[None, :] + (size - 1)]


def rel_pos_terms(
    q: Tensor, tables: Sequence[Tensor], size: Sequence[int], style: RelPosStyle = "decomposed"
) -> list[Tensor]:
    """One bias term per axis, each broadcastable to ``[B, *S, *S]`` (queries, then keys).

    With ``style="decomposed"`` (SAM, MViTv2) the term of axis ``a`` is
    ``<q_vec[b, q], R_a[q_a - k_a]>`` (unscaled query vectors), shaped
    ``[B, *S, 1, .., S_a, .., 1]``.

    ``style="sam_med3d"`` reproduces SAM-Med3D's 3D ``add_decomposed_rel_pos``, whose
    broadcasting puts every axis' term on the key's last axis and reads some query vectors at
    other positions (``rel_h[:, :, :, None, :, None]`` on a ``[B, d, h, w, k]`` tensor). Its
    released weights were trained with this bias, so it is kept exactly. For a cubic grid,
    query ``(q_d, q_h, q_w)`` and key ``(k_d, k_h, k_w)`` get
    ``<q[q_d, q_h, q_w], R_d[q_d - k_w]> + <q[q_d, q_h, k_d], R_h[q_h - k_w]>
    + <q[q_d, q_h, k_h], R_w[k_h - k_w]>``.

    Args:
        q: Queries ``[B, N, C]`` (``B`` may include heads), ``N = prod(size)``.
        tables: One table ``[2 * size[a] - 1, C]`` per axis ``a``.
        size: Grid size ``S`` of queries and keys.
        style: ``"decomposed"`` or ``"sam_med3d"`` (3 equal axes only).

    Returns:
        The terms, to be summed.
    """
    n = len(size)
    if len(tables) != n:
        msg = f"got {len(tables)} relative position tables for a {n}-axis grid"
        raise ValueError(msg)
    if style == "sam_med3d" and (n != 3 or len(set(size)) != 1):
        msg = f"the sam_med3d relative position style needs a cubic 3D grid, got {tuple(size)}"
        raise ValueError(msg)
    b, _, c = q.shape
    r_q = q.reshape(b, *size, c)
    axes = _AXES[:n]
    terms = []
    for a, (s, table) in enumerate(zip(size, tables, strict=True)):
        # rel[b, *q, k_a] = sum_c r_q[b, *q, c] * R[q_a, k_a, c]
        rel = torch.einsum(f"b{axes}c,{axes[a]}kc->b{axes}k", r_q, relative_table(table, s))
        if style == "sam_med3d":
            # SAM-Med3D's rel_d[:, :, :, :, None, None], rel_h[:, :, :, None, :, None] and
            # rel_w[:, :, :, None, None, :] on [B, d, h, w, k] against [B, d, h, w, d, h, w].
            d, h, w = size
            shapes = ((b, d, h, w, 1, 1, s), (b, d, h, 1, w, 1, s), (b, d, h, 1, 1, w, s))
            terms.append(rel.reshape(shapes[a]))
            continue
        key_shape = [1] * n
        key_shape[a] = s
        terms.append(rel.reshape(b, *size, *key_shape))  # [B, *S, 1, .., S_a, .., 1]
    return terms


def decomposed_rel_pos_bias(
    q: Tensor, tables: Sequence[Tensor], size: Sequence[int], style: RelPosStyle = "decomposed"
) -> Tensor:
    """Relative-position bias of every query-key pair (the sum of :func:`rel_pos_terms`).

    Args:
        q: Queries ``[B, N, C]`` (``B`` may include heads), ``N = prod(size)``.
        tables: One table ``[2 * size[a] - 1, C]`` per axis ``a``.
        size: Grid size ``S`` of queries and keys.
        style: ``"decomposed"`` or ``"sam_med3d"``, see :func:`rel_pos_terms`.

    Returns:
        Bias ``[B, N, N]``.
    """
    terms = rel_pos_terms(q, tables, size, style)
    bias = terms[0]
    for term in terms[1:]:
        bias = bias + term  # broadcasts to [B, *S, *S]
    n = math.prod(size)
    return bias.reshape(q.shape[0], n, n)


def rel_pos_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    tables: Sequence[Tensor] | None,
    size: Sequence[int],
    style: RelPosStyle = "decomposed",
) -> Tensor:
    """Multi-head softmax attention ``softmax(q k^T / sqrt(C) + bias) v``.

    Args:
        q: Queries ``[B, H, N, C]``.
        k: Keys ``[B, H, N, C]``.
        v: Values ``[B, H, N, C]``.
        tables: Relative position tables, one per axis, or None for no bias.
        size: Grid size ``S`` with ``prod(S) = N``.
        style: Relative-position style, see :func:`rel_pos_terms`.

    Returns:
        Attention output ``[B, H, N, C]``.
    """
    if tables is None:
        return F.scaled_dot_product_attention(q, k, v)
    b, h, n, c = q.shape
    needs_grad = torch.is_grad_enabled() and (
        q.requires_grad or any(t.requires_grad for t in tables)
    )
    if q.device.type == "cpu" and needs_grad:
        # SAM's own computation, adding the terms in place to save a copy of the [N, N] logits.
        terms = rel_pos_terms(q.reshape(b * h, n, c), tables, size, style)
        logits = ((q * c**-0.5) @ k.transpose(-2, -1)).view(b * h, *size, *size) + terms[0]
        for term in terms[1:]:
            logits.add_(term)
        return logits.view(b, h, n, n).softmax(dim=-1) @ v
    if needs_grad or b * h * n * n <= MASK_CHUNK_ELEMENTS:
        mask = decomposed_rel_pos_bias(q.reshape(b * h, n, c), tables, size, style)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask.view(b, h, n, n))
    # Without gradients the [B * heads, N, N] bias need not exist all at once: attend a few
    # (image, head) pairs at a time (MedSAM's 1024 px global attention over 8 slices would
    # otherwise hold 6 GiB of bias alone).
    # The chunks stay 4D: with 3D inputs SDPA takes its unfused path on CPU, 4x slower.
    q4, k4, v4 = (t.reshape(1, b * h, n, c) for t in (q, k, v))
    step = max(1, MASK_CHUNK_ELEMENTS // (n * n))
    out = torch.empty_like(q4)
    for start in range(0, b * h, step):
        part = (slice(None), slice(start, start + step))
        mask = decomposed_rel_pos_bias(q4[part][0], tables, size, style)
        out[part] = F.scaled_dot_product_attention(
            q4[part], k4[part], v4[part], attn_mask=mask[None]
        )
    return out.view(b, h, n, c)
