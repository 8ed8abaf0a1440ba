"""Norms over the last dimension: ``layernorm`` and ``rmsnorm``, and the QK-norm helper.

LayerNorm(x) = (x - mean(x)) / sqrt(var(x) + eps) * g + b (Ba et al., 2016).
RMSNorm(x) = x / sqrt(mean(x^2) + eps) * g (Zhang & Sennrich, 2019): LayerNorm without the mean
subtraction and the bias, as in T5, LLaMA and Gemma. Checked against that formula in the tests.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from plugformer.core.context import BuildContext
from plugformer.core.interfaces import Norm
from plugformer.core.slots import ArgumentError
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


class RMSNorm(Norm):
    """x / sqrt(mean(x^2) + eps) * weight over the last dimension.

    The statistics are computed in float32 (float64 for float64 input) and the result cast back
    to the input's dtype before the gain is applied (LLaMA's order), so half-precision inputs do
    not overflow in ``x^2``.

    Args:
        dim: size of the normalised (last) dimension.
        eps: added to the mean square for stability. Default: 1e-6.
    """

    def __init__(self, dim: int, *, eps: float = 1e-6, device=None, dtype=None) -> None:
        super().__init__()
        if dim < 1:
            raise ValueError(f"RMSNorm dim must be >= 1, got {dim}")
        if eps < 0:
            raise ValueError(f"RMSNorm eps must be >= 0, got {eps}")
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))

    def forward(self, x: Tensor) -> Tensor:
        """x: (..., dim) -> (..., dim)."""
        wide = x.to(torch.promote_types(x.dtype, torch.float32))
        normed = wide * torch.rsqrt(wide.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.to(x.dtype) * self.weight

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


def rmsnorm(ctx: BuildContext, *, eps: float = 1e-6) -> RMSNorm:
    """Root-mean-square norm, x / rms(x) * g, with no mean subtraction and no bias (T5, LLaMA).

    Args:
        eps: added to the mean square for stability.
    """
    if eps < 0:
        raise ArgumentError("eps", f"eps must be >= 0, got {eps}")
    return RMSNorm(ctx.d_model, eps=eps, **ctx.factory_kwargs)


def qk_norms(ctx: BuildContext, *, eps: float = 1e-6) -> tuple[RMSNorm, RMSNorm]:
    """A (q_norm, k_norm) pair of RMSNorms over ``ctx.head_dim``, for ``MultiHeadAttention``.

    QK-norm (Dehghani et al., 2023; OLMo 2, Gemma 3) normalises each head's queries and keys
    before the dot product, which bounds the attention logits and stabilises training. Each
    norm has its own gain of size head_dim, shared by all heads.
    """
    return (
        RMSNorm(ctx.head_dim, eps=eps, **ctx.factory_kwargs),
        RMSNorm(ctx.head_dim, eps=eps, **ctx.factory_kwargs),
    )


@hookimpl
def plugformer_register(registry) -> None:
    registry.add("norm", "layernorm", layernorm)
    registry.add("norm", "rmsnorm", rmsnorm)
