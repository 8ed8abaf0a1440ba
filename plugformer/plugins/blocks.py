"""Blocks: how attention, feed-forward and norms are wired with residuals.

``post_ln``: y = Norm(x + Sublayer(x)) (Vaswani et al., 2017; ``nn.Transformer`` default).
``pre_ln``: y = x + Sublayer(Norm(x)) (Xiong et al., 2020; ``norm_first=True``), stabler to train
deep and without warm-up.
"""

from __future__ import annotations

from typing import Optional

from torch import Tensor, nn

from plugformer.core.attention import LayerCache, Positions
from plugformer.core.context import BuildContext
from plugformer.core.interfaces import Block, BlockParts
from plugformer.hooks import hookimpl


class ResidualBlock(Block):
    """Self-attention, optional cross-attention and feed-forward, each with a norm and a residual.

    Subclasses decide where the norm sits. Submodules: ``self_attn``, ``cross_attn`` (absent in
    encoder and decoder-only blocks), ``ffn``, and ``self_attn_norm``, ``cross_attn_norm``,
    ``ffn_norm``.
    """

    def __init__(self, parts: BlockParts) -> None:
        super().__init__()
        self.self_attn = parts.self_attn
        self.self_attn_norm = parts.norm()
        self.cross_attn = parts.cross_attn
        self.cross_attn_norm = parts.norm() if parts.cross_attn is not None else None
        self.ffn = parts.ffn
        self.ffn_norm = parts.norm()
        self.dropout = nn.Dropout(parts.dropout)

    def _attend(self, x, *, self_mask, causal, positions, cache) -> Tensor:
        cache = cache.self_attn if cache is not None else None
        out = self.self_attn(x, mask=self_mask, causal=causal, positions=positions, cache=cache)
        return self.dropout(out)

    def _attend_memory(self, x, memory, *, memory_mask, cache) -> Tensor:
        cache = cache.cross_attn if cache is not None else None
        return self.dropout(self.cross_attn(x, memory, mask=memory_mask, cache=cache))

    def _feed_forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.ffn(x))


class PostLNBlock(ResidualBlock):
    """y = Norm(x + Sublayer(x)) for each sublayer, as in Vaswani et al. and ``nn.Transformer``."""

    def forward(
        self,
        x: Tensor,
        *,
        memory: Optional[Tensor] = None,
        self_mask: Optional[Tensor] = None,
        memory_mask: Optional[Tensor] = None,
        causal: bool = False,
        positions: Optional[Positions] = None,
        cache: Optional[LayerCache] = None,
    ) -> Tensor:
        """x: (B, L, D), memory: (B, S, D) or None -> (B, L, D)."""
        x = self.self_attn_norm(
            x + self._attend(x, self_mask=self_mask, causal=causal, positions=positions, cache=cache)
        )
        if self._check_memory(memory):
            x = self.cross_attn_norm(
                x + self._attend_memory(x, memory, memory_mask=memory_mask, cache=cache)
            )
        return self.ffn_norm(x + self._feed_forward(x))


class PreLNBlock(ResidualBlock):
    """y = x + Sublayer(Norm(x)) for each sublayer (``nn.Transformer(norm_first=True)``)."""

    def forward(
        self,
        x: Tensor,
        *,
        memory: Optional[Tensor] = None,
        self_mask: Optional[Tensor] = None,
        memory_mask: Optional[Tensor] = None,
        causal: bool = False,
        positions: Optional[Positions] = None,
        cache: Optional[LayerCache] = None,
    ) -> Tensor:
        """x: (B, L, D), memory: (B, S, D) or None -> (B, L, D)."""
        h = self.self_attn_norm(x)
        x = x + self._attend(h, self_mask=self_mask, causal=causal, positions=positions, cache=cache)
        if self._check_memory(memory):
            h = self.cross_attn_norm(x)
            x = x + self._attend_memory(h, memory, memory_mask=memory_mask, cache=cache)
        return x + self._feed_forward(self.ffn_norm(x))


def post_ln(ctx: BuildContext, parts: BlockParts, /) -> PostLNBlock:
    """Post-norm residual block, y = Norm(x + Sublayer(x)) (Vaswani et al., nn.Transformer)."""
    return PostLNBlock(parts)


def pre_ln(ctx: BuildContext, parts: BlockParts, /) -> PreLNBlock:
    """Pre-norm residual block, y = x + Sublayer(Norm(x)) (GPT-2, norm_first=True)."""
    return PreLNBlock(parts)


@hookimpl
def plugformer_register(registry) -> None:
    registry.add("block", "post_ln", post_ln)
    registry.add("block", "pre_ln", pre_ln)
