"""Norms: ``layernorm``."""

from __future__ import annotations

from torch import Tensor, nn

from plugformer.core.context import BuildContext
from plugformer.core.interfaces import Norm
from plugformer.hooks import hookimpl


class LayerNorm(Norm, nn.LayerNorm):
    """``nn.LayerNorm`` over the last dimension (Ba et al., 2016): (B, L, D) -> (B, L, D)."""

    def forward(self, x: Tensor) -> Tensor:
        return nn.LayerNorm.forward(self, x)


def layernorm(ctx: BuildContext, *, eps: float = 1e-5, bias: bool = True) -> LayerNorm:
    """Layer normalisation with a learned gain and (optionally) bias.

    Args:
        eps: added to the variance for stability.
        bias: whether the norm has a learned bias.
    """
    return LayerNorm(ctx.d_model, eps=eps, bias=bias, **ctx.factory_kwargs)


@hookimpl
def plugformer_register(registry) -> None:
    registry.add("norm", "layernorm", layernorm)
