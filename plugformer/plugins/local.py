"""``local``: sliding-window attention (Longformer, Beltagy et al., 2020; Mistral 7B, 2023).

Each query sees only the keys within ``window`` positions of its own, itself included. With
query position p (bottom-right aligned: query i of Lq sits at Lk - Lq + i) and key position j,
key j is in the window when

* causal: ``0 <= p - j < window`` (the query and the window - 1 keys before it; Mistral's
  ``sliding_window``),
* bidirectional: ``|p - j| < window`` (window - 1 keys on each side and the query: 2 * window - 1).

Computed by blocks of queries: each block of c queries attends only the c + window - 1 (causal)
or c + 2 * (window - 1) keys its window can reach, gathered with ``index_select``, so time and
memory grow as L * (c + window) instead of L^2. Equals dense attention under the band mask
(tested), including the score bias of ALiBi / T5 and a KV cache (Lq < Lk).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

from plugformer.core.attention import repeat_kv
from plugformer.core.context import BuildContext
from plugformer.core.interfaces import AttentionKernel, ScoreBias
from plugformer.core.masks import masked_softmax
from plugformer.core.slots import ArgumentError
from plugformer.hooks import hookimpl


def band_mask(lq: int, lk: int, window: int, *, causal: bool, device=None) -> Tensor:
    """(Lq, Lk) boolean, True = in the window; query i sits at position Lk - Lq + i."""
    q_pos = torch.arange(lk - lq, lk, device=device)[:, None]
    k_pos = torch.arange(lk, device=device)[None, :]
    return in_window(q_pos - k_pos, window, causal)


def in_window(distance: Tensor, window: int, causal: bool) -> Tensor:
    """Whether query-minus-key distances lie in the window (see the module docstring)."""
    if causal:
        return (distance >= 0) & (distance < window)
    return distance.abs() < window


class LocalAttention(AttentionKernel):
    """Exact softmax attention restricted to a sliding window, computed by query blocks.

    Args:
        window: positions a query sees on each side (bidirectional) or before it (causal),
            itself included; see the module docstring.
        block: queries per block; None picks max(window, 64). Default: None.
        scale: multiplies the scores. Default: head_dim ** -0.5.
        dropout: dropout on the attention weights while training. Default: 0.
    """

    supports_causal = True
    supports_bias = True
    supports_cache = True
    supports_mask = True

    def __init__(
        self,
        *,
        window: int,
        block: Optional[int] = None,
        scale: Optional[float] = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if window < 1:
            raise ValueError(f"local window must be >= 1, got {window}")
        if block is not None and block < 1:
            raise ValueError(f"local block must be >= 1, got {block}")
        self.window = window
        self.block = block
        self.scale = scale
        self.dropout = nn.Dropout(dropout)

    def forward(self, q: Tensor, k: Tensor, v: Tensor, *, mask: Optional[Tensor] = None,
                causal: bool = False, score_bias: Optional[ScoreBias] = None) -> Tensor:
        """q: (B, H, Lq, Dh), k/v: (B, Hkv, Lk, Dh) -> (B, H, Lq, Dh)."""
        heads, lq, head_dim = q.shape[1:]
        lk = k.shape[-2]
        q_idx, k_idx = self.layout(lq, lk, causal, q.device)  # (nb, c, 1), (nb, 1, span)
        n_blocks, size, span = q_idx.shape[0], q_idx.shape[1], k_idx.shape[-1]
        k_in = k_idx.clamp(0, max(lk - 1, 0))
        q_in = q_idx.clamp(max=lq - 1)
        gather = k_in.reshape(-1)
        k_blocks = repeat_kv(k, heads).index_select(2, gather).unflatten(2, (n_blocks, span))
        v_blocks = repeat_kv(v, heads).index_select(2, gather).unflatten(2, (n_blocks, span))
        scale = head_dim**-0.5 if self.scale is None else self.scale
        q_padded = nn.functional.pad(q * scale, (0, 0, 0, n_blocks * size - lq))  # (B, H, nb * c, Dh)
        q_blocks = q_padded.unflatten(2, (n_blocks, size))
        scores = q_blocks @ k_blocks.transpose(-2, -1)  # (B, H, nb, c, span)
        if score_bias is not None:
            scores = scores + score_bias(q_in, k_in).to(scores.dtype)  # (H, nb, c, span)
        in_range = (k_idx >= 0) & (k_idx < lk)
        allowed = in_window(q_idx + (lk - lq) - k_idx, self.window, causal) & in_range  # (nb, c, span)
        if mask is None:
            allowed = allowed | (q_idx >= lq)  # padding queries, cut off below, need no empty row
            weights = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
        else:
            weights = masked_softmax(scores, allowed & gather_mask(mask, q_in, k_in))
        weights = self.dropout(weights)
        out = weights @ v_blocks  # (B, H, nb, c, Dh)
        return out.flatten(2, 3)[:, :, :lq]

    def layout(self, lq: int, lk: int, causal: bool, device) -> tuple[Tensor, Tensor]:
        """Query indices (nb, c, 1) of each block (past Lq = padding) and the key indices
        (nb, 1, span) it may reach (outside [0, Lk) = padding)."""
        reach_left = self.window - 1
        reach_right = 0 if causal else self.window - 1
        offset = lk - lq
        size = max(self.window, 64) if self.block is None else self.block
        if size >= lq or size + reach_left + reach_right >= lk:
            q_idx = torch.arange(lq, device=device)[None, :, None]
            k_idx = torch.arange(max(offset - reach_left, 0), lk, device=device)[None, None, :]
            return q_idx, k_idx
        n_blocks = math.ceil(lq / size)
        starts = torch.arange(n_blocks, device=device) * size  # (nb,)
        span = size + reach_left + reach_right
        q_idx = (starts[:, None] + torch.arange(size, device=device))[:, :, None]
        k_idx = (starts[:, None] + offset - reach_left + torch.arange(span, device=device))[:, None, :]
        return q_idx, k_idx

    def extra_repr(self) -> str:
        return f"window={self.window}, block={self.block}, scale={self.scale}"


def gather_mask(mask: Tensor, q_idx: Tensor, k_idx: Tensor) -> Tensor:
    """A mask broadcastable to (B, H, Lq, Lk) read at the blocks' indices -> (B?, H?, nb, c, span)."""
    while mask.dim() < 4:
        mask = mask[None]
    q_idx = q_idx if mask.shape[-2] > 1 else torch.zeros_like(q_idx)
    k_idx = k_idx if mask.shape[-1] > 1 else torch.zeros_like(k_idx)
    return mask[:, :, q_idx, k_idx]


def local(
    ctx: BuildContext, *, window: int = 128, block: Optional[int] = None, scale: Optional[float] = None
) -> LocalAttention:
    """Sliding-window attention: each query sees the keys within window positions of it.

    Causal: the query and the window - 1 keys before it. Bidirectional: window - 1 keys on each
    side and the query. Not for cross-attention (set cross_attn to a global kernel).

    Args:
        window: positions seen on each side (bidirectional) or before (causal), self included.
        block: queries computed together; none means max(window, 64).
        scale: score multiplier; none means head_dim ** -0.5.
    """
    if window < 1:
        raise ArgumentError("window", f"window must be >= 1, got {window}")
    if block is not None and block < 1:
        raise ArgumentError("block", f"block must be >= 1, got {block}")
    if ctx.cross:
        raise ValueError(
            "local attention has no meaning across two sequences (cross-attention); give the "
            "model a global kernel for it, e.g. cross_attn=fused",
        )
    return LocalAttention(window=window, block=block, scale=scale, dropout=ctx.dropout)


@hookimpl
def plugformer_register(registry) -> None:
    registry.add("attention", "local", local)
