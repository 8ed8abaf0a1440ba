"""``t5_bias``: T5's bucketed relative position bias (Raffel et al., 2020, section 2.1).

Each head learns one scalar per bucket of relative distance k - q, added to the attention
scores. Distances below ``num_buckets / 2`` (per direction) get a bucket each; larger ones share
logarithmically wider buckets up to ``max_distance``, beyond which all fall in the last bucket.
Bidirectional (encoder) attention splits the buckets between keys before and after the query;
unidirectional (decoder) attention uses them all for keys at or before it (a later key, which
causal masking hides anyway, lands in bucket 0).

As in T5, one table serves every layer of a stack: the stack owns one positional encoding and
each layer's self-attention reads it. The encoder and the decoder each have their own. The
buckets are checked against a transcription of T5's ``_relative_position_bucket``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from plugformer.core.context import BuildContext
from plugformer.core.interfaces import PositionalEncoding
from plugformer.core.slots import ArgumentError
from plugformer.hooks import hookimpl


def relative_position_bucket(
    relative: Tensor, *, bidirectional: bool, num_buckets: int = 32, max_distance: int = 128
) -> Tensor:
    """Bucket index of each relative position ``k - q`` (int tensor of any shape), as T5.

    Log-spaced buckets are computed in float32, as T5's TensorFlow code does, so the boundaries
    match checkpoints trained with it.
    """
    offset = torch.zeros_like(relative)
    if bidirectional:
        num_buckets //= 2
        offset = (relative > 0).long() * num_buckets
        distance = relative.abs()
    else:
        distance = (-relative).clamp(min=0)
    max_exact = num_buckets // 2
    log_ratio = torch.log(distance.float() / max_exact) / math.log(max_distance / max_exact)
    large = max_exact + (log_ratio * (num_buckets - max_exact)).long()
    large = large.clamp(max=num_buckets - 1)
    return offset + torch.where(distance < max_exact, distance, large)


class T5RelativeBias(PositionalEncoding):
    """A learned (num_buckets, H) table of score biases, indexed by bucketed distance k - q.

    Args:
        heads: number of attention heads.
        bidirectional: split buckets between earlier and later keys (encoder); otherwise only
            earlier keys are told apart (decoder).
        num_buckets: number of relative-position buckets. Default: 32.
        max_distance: distance from which all positions share the last bucket. Default: 128.
        init_std: standard deviation of the initial table. Default: 0.02.
    """

    uses_bias = True

    def __init__(
        self,
        *,
        heads: int,
        bidirectional: bool,
        num_buckets: int = 32,
        max_distance: int = 128,
        init_std: float = 0.02,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        check_buckets(num_buckets, max_distance, bidirectional)
        self.bidirectional = bidirectional
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.weight = nn.Parameter(torch.empty(num_buckets, heads, device=device, dtype=dtype))
        if not self.weight.is_meta:  # a meta build (spec checking) has no values to initialise
            nn.init.normal_(self.weight, std=init_std)

    def buckets(self, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        """Positions of broadcastable shapes -> bucket indices of the broadcast shape."""
        return relative_position_bucket(
            k_pos - q_pos,
            bidirectional=self.bidirectional,
            num_buckets=self.num_buckets,
            max_distance=self.max_distance,
        )

    def score_bias(self, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        """Positions of broadcastable shapes -> bias (H, *shape)."""
        return self.weight[self.buckets(q_pos, k_pos)].movedim(-1, 0)  # (*shape, H) -> (H, *shape)

    def extra_repr(self) -> str:
        heads = self.weight.shape[1]
        return (
            f"heads={heads}, bidirectional={self.bidirectional}, num_buckets={self.num_buckets}, "
            f"max_distance={self.max_distance}"
        )


def check_buckets(num_buckets: int, max_distance: int, bidirectional: bool) -> None:
    """Raise ValueError unless every direction has at least 2 exact buckets below max_distance."""
    per_direction = num_buckets // 2 if bidirectional else num_buckets
    if per_direction < 4:
        need = 8 if bidirectional else 4
        raise ValueError(f"num_buckets must be >= {need} here, got {num_buckets}")
    if max_distance <= per_direction // 2:
        raise ValueError(
            f"max_distance ({max_distance}) must exceed the exact buckets per direction "
            f"({per_direction // 2})"
        )


def t5_bias(ctx: BuildContext, *, num_buckets: int = 32, max_distance: int = 128) -> T5RelativeBias:
    """T5's learned relative position bias, bucketed log-distance, shared by all layers.

    Bidirectional in encoders, unidirectional in decoders (ctx.causal). The table starts as
    N(0, 1/d_model), as T5's. Use it with attention that has no 1/sqrt(d) scaling, as T5, for a
    faithful copy: attn=fused(scale=1.0).

    Args:
        num_buckets: relative-position buckets (split between directions in encoders).
        max_distance: distance from which all positions share the last bucket.
    """
    try:
        check_buckets(num_buckets, max_distance, not ctx.causal)
    except ValueError as err:
        argument = "num_buckets" if str(err).startswith("num_buckets") else ("max_distance", "num_buckets")
        raise ArgumentError(argument, str(err)) from None
    return T5RelativeBias(
        heads=ctx.heads,
        bidirectional=not ctx.causal,
        num_buckets=num_buckets,
        max_distance=max_distance,
        init_std=ctx.d_model**-0.5,
        **ctx.factory_kwargs,
    )


@hookimpl
def plugformer_register(registry) -> None:
    registry.add("positional", "t5_bias", t5_bias)
