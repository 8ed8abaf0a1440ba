"""BuildContext: the model-level facts that every part factory receives."""

from __future__ import annotations

import warnings
from typing import Any

import attrs
import torch

DEPRECATED_BIAS = (
    "BuildContext.bias is now BuildContext.score_bias (the positional score bias; 'bias' is kept "
    "for learned biases); the old name stops working in the next release"
)


@attrs.frozen(kw_only=True)
class BuildContext:
    """What a part factory may know about the model it is built into.

    Factories read the context and pass plain values to their part's constructor; parts never
    hold a context (see STYLE.md, "parts get what they need").

    Attributes:
        d_model: width of the residual stream.
        heads: number of query heads.
        kv_heads: number of key/value heads (``heads`` for plain multi-head attention, fewer for
            grouped-query attention). Default: ``heads``.
        head_dim: width of one head. Default: ``d_model // heads``.
        causal: whether the attention being built is causal (decoder self-attention, ``lm``).
        cross: whether the attention being built attends to another sequence (encoder memory).
        decoder: whether the part sits in a causal decoder stack. Cross-attention there has
            ``causal`` False but its queries still arrive one at a time, so a kernel that
            looks across queries (region routing) must not.
        score_bias: whether the stack's positional encoding hands attention a score bias (ALiBi,
            T5): a kernel that cannot take one is refused at build time. ``ctx.bias`` and
            ``evolve(bias=...)`` are deprecated aliases (one release).
        max_len: longest sequence the model is built for (learned tables size themselves by it).
        dropout: dropout probability of the model.
        layer: index of the layer being built (0-based), for per-layer choices.
        layers: number of layers of the stack being built.
        device, dtype: where and in what precision parameters are created.
    """

    d_model: int = 64
    heads: int = 4
    kv_heads: int = attrs.field()
    head_dim: int = attrs.field()
    causal: bool = False
    cross: bool = False
    decoder: bool = False
    score_bias: bool = False
    max_len: int = 1024
    dropout: float = 0.0
    layer: int = 0
    layers: int = 1
    device: torch.device | str | None = None
    dtype: torch.dtype | None = None

    @kv_heads.default
    def _default_kv_heads(self) -> int:
        return self.heads

    @head_dim.default
    def _default_head_dim(self) -> int:
        return self.d_model // self.heads if self.heads else 0

    @property
    def factory_kwargs(self) -> dict[str, Any]:
        """``device`` and ``dtype`` as keyword arguments for ``nn.Module`` constructors."""
        return {"device": self.device, "dtype": self.dtype}

    @property
    def bias(self) -> bool:
        """Deprecated name of :attr:`score_bias`."""
        warnings.warn(DEPRECATED_BIAS, DeprecationWarning, stacklevel=2)
        return self.score_bias

    def evolve(self, **changes: Any) -> "BuildContext":
        """A copy with some fields changed (``head_dim`` / ``kv_heads`` re-derived if not given)."""
        if "bias" in changes:
            warnings.warn(DEPRECATED_BIAS, DeprecationWarning, stacklevel=2)
            changes["score_bias"] = changes.pop("bias")
        values = attrs.asdict(self, recurse=False)
        if "heads" in changes or "d_model" in changes:
            values.pop("head_dim")
            if "heads" in changes and "kv_heads" not in changes and self.kv_heads == self.heads:
                values.pop("kv_heads")
        values.update(changes)
        return BuildContext(**values)
