"""A third-party plugformer plugin: ``cosine`` attention, found through an entry point.

Installing this distribution makes ``attention=cosine`` (and ``cosine(init_scale=20)``) usable in
every spec, ``plugformer list`` and ``plugformer describe cosine``; its ``pyproject.toml`` declares

    [project.entry-points.plugformer]
    example = "plugformer_example_plugin"

and this module implements the one hook, ``plugformer_register``.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from plugformer.core.attention import repeat_kv, score_bias_grid
from plugformer.core.context import BuildContext
from plugformer.core.interfaces import AttentionKernel, ScoreBias
from plugformer.core.masks import masked_softmax, with_causal
from plugformer.hooks import hookimpl

__version__ = "0.1.0"


class CosineAttention(AttentionKernel):
    """Cosine-similarity attention with a learned temperature: softmax(g * cos(q, k)) v, with q
    and k scaled to unit length along the head dimension (QK-norm; Henry et al., 2020,
    "Query-Key Normalization for Transformers").

    Scores are bounded by ``g``, so the softmax cannot saturate however large q and k grow.
    Checked against ``F.scaled_dot_product_attention`` on normalised q and k with ``scale=g``.

    Args:
        init_scale: initial temperature g (one learned scalar). Default: 10.
        dropout: dropout on the attention weights while training. Default: 0.
        eps: guards the normalisation of zero vectors. Default: 1e-6.
    """

    supports_bias = True

    def __init__(
        self,
        *,
        init_scale: float = 10.0,
        dropout: float = 0.0,
        eps: float = 1e-6,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if init_scale <= 0:
            raise ValueError(f"init_scale must be positive, got {init_scale}")
        self.scale = nn.Parameter(torch.tensor(float(init_scale), device=device, dtype=dtype))
        self.dropout = nn.Dropout(dropout)
        self.eps = eps

    def forward(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        *,
        mask: Optional[Tensor] = None,
        causal: bool = False,
        score_bias: Optional[ScoreBias] = None,
    ) -> Tensor:
        """q: (B, H, Lq, Dh), k/v: (B, Hkv, Lk, Dh) -> (B, H, Lq, Dh)."""
        heads, lq, lk = q.shape[1], q.shape[-2], k.shape[-2]
        q = F.normalize(q, dim=-1, eps=self.eps)
        k = F.normalize(repeat_kv(k, heads), dim=-1, eps=self.eps)  # (B, H, Lk, Dh)
        scores = self.scale * (q @ k.transpose(-2, -1))  # (B, H, Lq, Lk)
        if score_bias is not None:
            scores = scores + score_bias_grid(score_bias, lq, lk, q.device).to(scores.dtype)  # (H, Lq, Lk)
        weights = masked_softmax(scores, with_causal(mask, causal, lq, lk, q.device))
        return self.dropout(weights) @ repeat_kv(v, heads)

    def extra_repr(self) -> str:
        return f"scale={self.scale.item():.3g}"


def cosine(ctx: BuildContext, *, init_scale: float = 10.0) -> CosineAttention:
    """Cosine-similarity attention with a learned temperature (QK-norm, Henry et al. 2020).

    Args:
        init_scale: initial temperature g multiplying the cosine similarities; larger is
            sharper.
    """
    return CosineAttention(init_scale=init_scale, dropout=ctx.dropout, **ctx.factory_kwargs)


@hookimpl
def plugformer_register(registry) -> None:
    registry.add("attention", "cosine", cosine)
