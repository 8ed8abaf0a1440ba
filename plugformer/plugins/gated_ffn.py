"""Gated feed-forward networks: ``swiglu`` and ``geglu`` (Shazeer, 2020, "GLU Variants Improve
Transformer").

FFN(x) = down(act(gate(x)) * up(x)), with act = SiLU (SwiGLU: PaLM, LLaMA) or GELU (GeGLU: T5
v1.1, Gemma). A gated FFN has three matrices instead of two, so the hidden width defaults to
about 2/3 of the usual 4 * d_model to keep the parameter count (LLaMA's rule, see
:func:`llama_hidden_dim`).
"""

from __future__ import annotations

from typing import Optional

from torch import Tensor, nn

from plugformer.core.context import BuildContext
from plugformer.core.interfaces import FeedForward
from plugformer.core.slots import ArgumentError
from plugformer.hooks import hookimpl


class GatedFeedForward(FeedForward):
    """FFN(x) = down_proj(act(gate_proj(x)) * up_proj(x)), dropout on the gated hidden units.

    Args:
        d_model: input and output width.
        d_ff: hidden width.
        activation: the non-linearity on the gate, e.g. ``nn.SiLU()``.
        dropout: dropout on the hidden units. Default: 0.
        bias: whether the three projections have biases. Default: False.
    """

    def __init__(
        self,
        *,
        d_model: int,
        d_ff: int,
        activation: nn.Module,
        dropout: float = 0.0,
        bias: bool = False,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        fk = {"device": device, "dtype": dtype}
        self.gate_proj = nn.Linear(d_model, d_ff, bias=bias, **fk)
        self.up_proj = nn.Linear(d_model, d_ff, bias=bias, **fk)
        self.activation = activation
        self.dropout = nn.Dropout(dropout)
        self.down_proj = nn.Linear(d_ff, d_model, bias=bias, **fk)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, L, D) -> (B, L, D)."""
        hidden = self.activation(self.gate_proj(x)) * self.up_proj(x)  # (B, L, d_ff)
        return self.down_proj(self.dropout(hidden))


def llama_hidden_dim(d_model: int, multiple_of: int) -> int:
    """LLaMA's hidden width for a gated FFN: int(8/3 * d_model) rounded up to ``multiple_of``.

    A plain FFN of width 4 * d_model has 8 * d_model^2 weights; three matrices of width
    8/3 * d_model have the same. Rounding up to a multiple keeps matmuls hardware-friendly
    (LLaMA-7B: d_model 4096, multiple_of 256 -> 11008).
    """
    hidden = 8 * d_model // 3
    return multiple_of * -(-hidden // multiple_of)


def build_gated(
    ctx: BuildContext, activation: nn.Module, *, d_ff: Optional[int], multiple_of: int, bias: bool
) -> GatedFeedForward:
    """A :class:`GatedFeedForward` for ``ctx``; ``d_ff=None`` takes :func:`llama_hidden_dim`."""
    if multiple_of < 1:
        raise ArgumentError("multiple_of", f"multiple_of must be >= 1, got {multiple_of}")
    d_ff = llama_hidden_dim(ctx.d_model, multiple_of) if d_ff is None else d_ff
    if d_ff < 1:
        raise ArgumentError("d_ff", f"d_ff must be >= 1, got {d_ff}")
    return GatedFeedForward(
        d_model=ctx.d_model, d_ff=d_ff, activation=activation, dropout=ctx.dropout, bias=bias,
        **ctx.factory_kwargs,
    )


def swiglu(
    ctx: BuildContext, *, d_ff: Optional[int] = None, multiple_of: int = 256, bias: bool = False
) -> GatedFeedForward:
    """SwiGLU feed-forward, down(silu(gate(x)) * up(x)) (Shazeer 2020; PaLM, LLaMA).

    Args:
        d_ff: hidden width; none means int(8/3 * d_model) rounded up to multiple_of (LLaMA's
            rule, the parameter count of a 4 * d_model plain FFN).
        multiple_of: the default d_ff is rounded up to a multiple of this.
        bias: biases in the three projections.
    """
    return build_gated(ctx, nn.SiLU(), d_ff=d_ff, multiple_of=multiple_of, bias=bias)


def geglu(
    ctx: BuildContext, *, d_ff: Optional[int] = None, multiple_of: int = 256, bias: bool = False
) -> GatedFeedForward:
    """GeGLU feed-forward, down(gelu(gate(x)) * up(x)) (Shazeer 2020; T5 v1.1, Gemma).

    Args:
        d_ff: hidden width; none means int(8/3 * d_model) rounded up to multiple_of (LLaMA's
            rule, the parameter count of a 4 * d_model plain FFN).
        multiple_of: the default d_ff is rounded up to a multiple of this.
        bias: biases in the three projections.
    """
    return build_gated(ctx, nn.GELU(), d_ff=d_ff, multiple_of=multiple_of, bias=bias)


@hookimpl
def plugformer_register(registry) -> None:
    registry.add("feedforward", "swiglu", swiglu)
    registry.add("feedforward", "geglu", geglu)
