"""Deliberately broken parts, one defect each, for the conformance kit's own tests.

Each is a small variant of written-out attention (or of a tiny positional encoding or
feed-forward network) with one bug of a kind the field keeps shipping.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from plugformer.core.attention import repeat_kv, score_bias_grid
from plugformer.core.context import BuildContext
from plugformer.core.interfaces import AttentionKernel, FeedForward, PositionalEncoding, ScoreBias
from plugformer.core.masks import causal_mask, masked_softmax, merge, with_causal
from plugformer.hooks import hookimpl


class Attention(AttentionKernel):
    """softmax(q k^T / sqrt(Dh) + score_bias) v under mask and causal: correct, the base of the broken ones."""

    supports_bias = True

    def scale(self, lq: int, lk: int, dh: int) -> float:
        return dh ** -0.5

    def allowed(self, mask: Optional[Tensor], causal: bool, lq: int, lk: int, device) -> Optional[Tensor]:
        return with_causal(mask, causal, lq, lk, device)

    def keys(self, k: Tensor, v: Tensor, lq: int, causal: bool) -> tuple[Tensor, Tensor]:
        return k, v

    def forward(self, q: Tensor, k: Tensor, v: Tensor, *, mask: Optional[Tensor] = None, causal: bool = False,
                score_bias: Optional[ScoreBias] = None) -> Tensor:
        """q: (B, H, Lq, Dh), k/v: (B, Hkv, Lk, Dh) -> (B, H, Lq, Dh)."""
        heads, lq, lk = q.shape[1], q.shape[-2], k.shape[-2]
        allowed = self.allowed(mask, causal, lq, lk, q.device)
        k, v = self.keys(repeat_kv(k, heads), repeat_kv(v, heads), lq, causal)
        if allowed is not None:
            allowed = allowed[..., -k.shape[-2]:]
        scores = (q @ k.transpose(-2, -1)) * self.scale(lq, k.shape[-2], q.shape[-1])  # (B, H, Lq, Lk)
        if score_bias is not None:
            scores = scores + score_bias_grid(score_bias, lq, lk, q.device)[..., -k.shape[-2]:].to(scores.dtype)
        return self.softmax(scores, allowed) @ v

    def softmax(self, scores: Tensor, allowed: Optional[Tensor]) -> Tensor:
        return masked_softmax(scores, allowed)


class Peek(Attention):
    """Causal attention that also sees the next token (the mask's diagonal is off by one)."""

    def allowed(self, mask, causal, lq, lk, device):
        if not causal:
            return mask
        ahead = causal_mask(lq, lk, device=device) | causal_mask(lq, lk, device=device).roll(1, dims=-1)
        return merge(mask, ahead)


class CacheDrift(Attention):
    """A one-token decoding fast path that forgets the 1/sqrt(Dh) scale."""

    def scale(self, lq, lk, dh):
        return 1.0 if lq == 1 and lk > 1 else dh ** -0.5


class PadLeak(Attention):
    """Drops key-padding masks (B, 1, 1, Lk): padding takes softmax weight."""

    def allowed(self, mask, causal, lq, lk, device):
        if mask is not None and mask.dim() == 4 and mask.shape[-2] == 1:
            mask = None
        return with_causal(mask, causal, lq, lk, device)


class NanRows(Attention):
    """Plain softmax over -inf: a fully masked row gives NaN."""

    def softmax(self, scores, allowed):
        return scores.softmax(-1) if allowed is None else scores.masked_fill(~allowed, float("-inf")).softmax(-1)


class IgnoresCache(Attention):
    """Declares supports_cache, but a causal chunk of queries after a cache attends only to itself."""

    def keys(self, k, v, lq, causal):
        if causal and 1 < lq < k.shape[-2]:
            return k[..., -lq:, :], v[..., -lq:, :]
        return k, v


class DeadParameter(Attention):
    """Holds a parameter that nothing uses."""

    def __init__(self) -> None:
        super().__init__()
        self.temperature = nn.Parameter(torch.ones(1))


class BreaksGraph(Attention):
    """Branches in Python on a tensor's value: no single graph for torch.compile."""

    def scale(self, lq, lk, dh):
        return dh ** -0.5

    def forward(self, q, k, v, *, mask=None, causal=False, score_bias=None):
        """q: (B, H, Lq, Dh), k/v: (B, Hkv, Lk, Dh) -> (B, H, Lq, Dh)."""
        if float(q.detach().abs().max()) > 1e30:
            q = q / 2
        return super().forward(q, k, v, mask=mask, causal=causal, score_bias=score_bias)


class BadBiasShape(PositionalEncoding):
    """ALiBi-like score bias that flattens its positions: right on the (Lq, 1) x (1, Lk) grid only."""

    uses_bias = True

    def __init__(self, heads: int) -> None:
        super().__init__()
        self.register_buffer("slopes", 2.0 ** -torch.arange(1, heads + 1, dtype=torch.float32))

    def score_bias(self, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        distance = (q_pos.reshape(-1, 1) - k_pos.reshape(1, -1)).abs().float()  # (Nq, Nk), not broadcast
        return -self.slopes[:, None, None] * distance


class Upcast(FeedForward):
    """A GELU network that returns float32 for bfloat16 input."""

    def __init__(self, d_model: int, device=None, dtype=None) -> None:
        super().__init__()
        self.up = nn.Linear(d_model, 2 * d_model, device=device, dtype=dtype)
        self.down = nn.Linear(2 * d_model, d_model, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        """(B, L, D) -> (B, L, D)."""
        out = self.down(nn.functional.gelu(self.up(x)))
        return out.float() if out.dtype == torch.bfloat16 else out


def peek(ctx: BuildContext) -> Peek:
    """Sees one token ahead."""
    return Peek()


def cache_drift(ctx: BuildContext) -> CacheDrift:
    """Cached decoding drifts."""
    return CacheDrift()


def pad_leak(ctx: BuildContext) -> PadLeak:
    """Padding reaches real tokens."""
    return PadLeak()


def nan_rows(ctx: BuildContext) -> NanRows:
    """NaN on fully masked rows."""
    return NanRows()


def ignores_cache(ctx: BuildContext) -> IgnoresCache:
    """Claims supports_cache, ignores the cache."""
    return IgnoresCache()


def dead_parameter(ctx: BuildContext) -> DeadParameter:
    """A parameter without gradient."""
    return DeadParameter().to(**{k: v for k, v in ctx.factory_kwargs.items() if v is not None})


def breaks_graph(ctx: BuildContext) -> BreaksGraph:
    """A value-dependent Python branch."""
    return BreaksGraph()


def bad_bias_shape(ctx: BuildContext) -> BadBiasShape:
    """A score bias of the wrong shape."""
    return BadBiasShape(ctx.heads)


def upcast(ctx: BuildContext) -> Upcast:
    """Changes the dtype."""
    return Upcast(ctx.d_model, **ctx.factory_kwargs)


ATTENTION = (peek, cache_drift, pad_leak, nan_rows, ignores_cache, dead_parameter, breaks_graph)


@hookimpl
def plugformer_register(registry) -> None:
    for factory in ATTENTION:
        registry.add("attention", factory.__name__, factory)
    registry.add("positional", "bad_bias_shape", bad_bias_shape)
    registry.add("feedforward", "upcast", upcast)
