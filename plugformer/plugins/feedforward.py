"""Position-wise feed-forward networks: ``relu`` (Vaswani et al.) and ``gelu``."""

from __future__ import annotations

from typing import Callable, Optional

from torch import Tensor, nn

from plugformer.core.context import BuildContext
from plugformer.core.interfaces import FeedForward
from plugformer.core.slots import ArgumentError
from plugformer.hooks import hookimpl

#: The ``approximate`` values of ``gelu``, as ``nn.GELU`` takes them.
GELU_APPROXIMATIONS = ("none", "tanh")


class FeedForwardNetwork(FeedForward):
    """FFN(x) = act(x W_up + b_up) W_down + b_down, with dropout after the activation.

    Args:
        d_model: input and output width.
        d_ff: hidden width.
        activation: the non-linearity, e.g. ``nn.ReLU()``.
        dropout: dropout after the activation. Default: 0.
        bias: whether the projections have biases. Default: True.
    """

    def __init__(
        self,
        *,
        d_model: int,
        d_ff: int,
        activation: nn.Module,
        dropout: float = 0.0,
        bias: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        self.up_proj = nn.Linear(d_model, d_ff, bias=bias, device=device, dtype=dtype)
        self.activation = activation
        self.dropout = nn.Dropout(dropout)
        self.down_proj = nn.Linear(d_ff, d_model, bias=bias, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, L, D) -> (B, L, D)."""
        return self.down_proj(self.dropout(self.activation(self.up_proj(x))))


def _ffn(ctx: BuildContext, activation: nn.Module, d_ff: Optional[int], bias: bool) -> FeedForwardNetwork:
    d_ff = 4 * ctx.d_model if d_ff is None else d_ff
    if d_ff < 1:
        raise ValueError(f"d_ff must be >= 1, got {d_ff}")
    return FeedForwardNetwork(
        d_model=ctx.d_model, d_ff=d_ff, activation=activation, dropout=ctx.dropout, bias=bias,
        **ctx.factory_kwargs,
    )


def relu(ctx: BuildContext, *, d_ff: Optional[int] = None, bias: bool = True) -> FeedForwardNetwork:
    """FFN(x) = max(0, x W1 + b1) W2 + b2, the feed-forward network of Vaswani et al.

    Args:
        d_ff: hidden width; none means 4 * d_model.
        bias: biases in both projections.
    """
    return _ffn(ctx, nn.ReLU(inplace=True), d_ff, bias)  # in place: up_proj's output is fresh


def gelu(
    ctx: BuildContext, *, d_ff: Optional[int] = None, bias: bool = True, approximate: str = "none"
) -> FeedForwardNetwork:
    """FFN with a GELU non-linearity (Hendrycks & Gimpel, 2016; BERT, GPT-2).

    Args:
        d_ff: hidden width; none means 4 * d_model.
        bias: biases in both projections.
        approximate: 'none' for the exact x * Phi(x); 'tanh' for
            0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), the form GPT-2 was trained with
            (Hugging Face's gelu_new), as ``nn.GELU(approximate=...)``.

    Raises:
        ArgumentError: ``approximate`` is neither 'none' nor 'tanh'; ``d_ff`` < 1.
    """
    if approximate not in GELU_APPROXIMATIONS:
        raise ArgumentError(
            "approximate", f"approximate must be one of {GELU_APPROXIMATIONS}, got {approximate!r}"
        )
    return _ffn(ctx, nn.GELU(approximate=approximate), d_ff, bias)


@hookimpl
def plugformer_register(registry) -> None:
    registry.add("feedforward", "relu", relu)
    registry.add("feedforward", "gelu", gelu)
