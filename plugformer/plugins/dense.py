"""``dense``: scaled dot-product attention written out, as in Vaswani et al. (2017).

A = Q K^T / sqrt(d_k), P = softmax(A), out = P V. The reference every other kernel is tested
against, and the one to use when you want to look at the attention weights.
"""

from __future__ import annotations

from typing import Optional

from torch import Tensor, nn

from plugformer.core.attention import repeat_kv, score_bias_grid
from plugformer.core.context import BuildContext
from plugformer.core.interfaces import AttentionKernel, ScoreBias
from plugformer.core.masks import masked_softmax, with_causal
from plugformer.hooks import hookimpl


class DenseAttention(AttentionKernel):
    """Exact softmax attention with every score materialised, (B, H, Lq, Lk).

    Args:
        scale: multiplies the scores. Default: head_dim ** -0.5.
        dropout: dropout on the attention weights while training. Default: 0.
    """

    supports_bias = True
    supports_additive_mask = True

    def __init__(self, *, scale: Optional[float] = None, dropout: float = 0.0) -> None:
        super().__init__()
        self.scale = scale
        self.dropout = nn.Dropout(dropout)

    def weights(
        self,
        q: Tensor,
        k: Tensor,
        *,
        mask: Optional[Tensor] = None,
        causal: bool = False,
        score_bias: Optional[ScoreBias] = None,
    ) -> Tensor:
        """The attention weights P: q (B, H, Lq, Dh), k (B, Hkv, Lk, Dh) -> (B, H, Lq, Lk)."""
        lq, lk = q.shape[-2], k.shape[-2]
        scale = q.shape[-1] ** -0.5 if self.scale is None else self.scale
        scores = q @ repeat_kv(k, q.shape[1]).transpose(-2, -1) * scale  # (B, H, Lq, Lk)
        if score_bias is not None:
            scores = scores + score_bias_grid(score_bias, lq, lk, q.device).to(scores.dtype)  # (H, Lq, Lk)
        return masked_softmax(scores, with_causal(mask, causal, lq, lk, q.device))

    def forward(self, q: Tensor, k: Tensor, v: Tensor, *, mask: Optional[Tensor] = None,
                causal: bool = False, score_bias: Optional[ScoreBias] = None) -> Tensor:
        """q: (B, H, Lq, Dh), k/v: (B, Hkv, Lk, Dh) -> (B, H, Lq, Dh)."""
        p = self.dropout(self.weights(q, k, mask=mask, causal=causal, score_bias=score_bias))
        return p @ repeat_kv(v, q.shape[1])


def dense(ctx: BuildContext, *, scale: Optional[float] = None) -> DenseAttention:
    """Exact attention, softmax(QK^T / sqrt(d)) V written out; inspect weights with .weights().

    Args:
        scale: score multiplier; none means head_dim ** -0.5.
    """
    return DenseAttention(scale=scale, dropout=ctx.dropout)


@hookimpl
def plugformer_register(registry) -> None:
    registry.add("attention", "dense", dense)
