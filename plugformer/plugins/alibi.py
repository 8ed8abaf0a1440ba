"""``alibi``: attention with linear biases (Press et al., 2022, "Train Short, Test Long").

No position embedding; each head h adds -m_h * |i - j| to the score of query i and key j. The
slopes m_h form a geometric sequence: for n heads, a power of two, m_h = 2^(-8h/n), h = 1..n;
otherwise the n' = 2^floor(log2 n) slopes of that rule followed by every other slope of the
2n' rule, until n (the paper's code, ``get_slopes``). Checked against that definition.

The paper defines ALiBi for causal attention, where key j <= i and -m (i - j) = -m |i - j|. We
use the symmetric form -m |i - j| everywhere: it is the paper's bias for every key a causal query
can see, and for bidirectional attention (encoders) it penalises distance both ways, where the
signed -m (i - j) would reward attending far into the future. (The paper's code adds m * j per
row instead of -m (i - j); softmax is shift-invariant per row, so that is the same attention.)
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from plugformer.core.context import BuildContext
from plugformer.core.interfaces import PositionalEncoding
from plugformer.core.slots import ArgumentError
from plugformer.hooks import hookimpl


def alibi_slopes(heads: int, max_bias: float = 8.0) -> list[float]:
    """The per-head slopes of ALiBi, steepest first: 2^(-max_bias * h / n) for n a power of two,
    the closest-power-of-two rule otherwise."""
    if heads < 1:
        raise ValueError(f"alibi needs heads >= 1, got {heads}")
    closest = 2 ** math.floor(math.log2(heads))
    slopes = [2.0 ** (-max_bias * h / closest) for h in range(1, closest + 1)]
    if closest < heads:
        doubled = [2.0 ** (-max_bias * h / (2 * closest)) for h in range(1, 2 * closest + 1)]
        slopes += doubled[0::2][: heads - closest]
    return slopes


class ALiBiPositions(PositionalEncoding):
    """Score bias -slope_h * |q - k| per head; no parameters, no embedding, no rotation.

    Args:
        heads: number of attention heads (one slope each).
        max_bias: the 8 of the paper's slopes 2^(-8h/n). Default: 8.
    """

    uses_bias = True

    def __init__(self, *, heads: int, max_bias: float = 8.0, device=None) -> None:
        super().__init__()
        if max_bias <= 0:
            raise ValueError(f"alibi max_bias must be > 0, got {max_bias}")
        self.heads = heads
        self.max_bias = max_bias
        slopes = torch.tensor(alibi_slopes(heads, max_bias), dtype=torch.float32)
        self.register_buffer("slopes", slopes.to(device), persistent=False)

    def score_bias(self, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        """Positions of broadcastable shapes -> bias (H, *shape), float32."""
        distance = (q_pos - k_pos).abs().to(torch.float32)
        slopes = self.slopes.view(-1, *([1] * distance.dim()))  # (H, 1, ..., 1)
        return -slopes * distance

    def extra_repr(self) -> str:
        return f"heads={self.heads}, max_bias={self.max_bias}"


def alibi(ctx: BuildContext, *, max_bias: float = 8.0) -> ALiBiPositions:
    """Linear distance penalty on attention scores, -m_h * |i - j| per head (Press et al. 2022).

    Args:
        max_bias: the 8 in the paper's slopes 2^(-8h/n); larger makes every head more local.
    """
    if max_bias <= 0:
        raise ArgumentError("max_bias", f"max_bias must be > 0, got {max_bias}")
    return ALiBiPositions(heads=ctx.heads, max_bias=max_bias, device=ctx.device)


@hookimpl
def plugformer_register(registry) -> None:
    registry.add("positional", "alibi", alibi)
