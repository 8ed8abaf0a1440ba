"""More ways to wire a layer: ``parallel`` (GPT-J, PaLM) and ``sandwich`` (CogView, Gemma 2).

``parallel``: y = x + SelfAttn(Norm(x)) + FFN(Norm(x)), one norm shared by both branches
(Wang & Komatsuzaki's GPT-J, 2021; Chowdhery et al.'s PaLM, 2022): the two branches can run at
once, about 15% faster at scale for a small loss in quality. In a decoder with cross-attention,
cross-attention reads the self-attended stream, as in the classic decoder, and sits between the
two parallel branches with its own pre-norm::

    h = Norm(x)
    u = x + SelfAttn(h)
    u = u + CrossAttn(NormC(u), memory)
    y = u + FFN(h)

so the FFN still reads the same Norm(x) as self-attention and can run alongside both attentions.

``sandwich``: y = x + NormOut(Sublayer(NormIn(x))) for each sublayer (Ding et al., 2021,
"CogView"; Gemma 2's pre- and post-norms): pre-LN with a second norm on each branch's output,
which keeps the residual stream from growing with depth.
"""

from __future__ import annotations

from typing import Optional

from torch import Tensor, nn

from plugformer.core.attention import LayerCache, Positions
from plugformer.core.context import BuildContext
from plugformer.core.interfaces import Block, BlockParts
from plugformer.hooks import hookimpl
from plugformer.plugins.blocks import ResidualBlock


class ParallelBlock(Block):
    """x + SelfAttn(Norm(x)) + FFN(Norm(x)); decoders add a pre-norm cross-attention between.

    Submodules: ``self_attn``, ``cross_attn`` (absent in encoder and decoder-only blocks),
    ``ffn``, ``norm`` (shared by self-attention and FFN) and ``cross_attn_norm``.
    """

    def __init__(self, parts: BlockParts) -> None:
        super().__init__()
        self.self_attn = parts.self_attn
        self.cross_attn = parts.cross_attn
        self.ffn = parts.ffn
        self.norm = parts.norm()
        self.cross_attn_norm = parts.norm() if parts.cross_attn is not None else None
        self.dropout = nn.Dropout(parts.dropout)

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
        h = self.norm(x)
        self_cache = cache.self_attn if cache is not None else None
        attended = self.self_attn(h, mask=self_mask, causal=causal, positions=positions, cache=self_cache)
        out = x + self.dropout(attended)
        if self._check_memory(memory):
            cross_cache = cache.cross_attn if cache is not None else None
            crossed = self.cross_attn(self.cross_attn_norm(out), memory, mask=memory_mask, cache=cross_cache)
            out = out + self.dropout(crossed)
        return out + self.dropout(self.ffn(h))


class SandwichBlock(ResidualBlock):
    """y = x + NormOut(Sublayer(NormIn(x))) for each sublayer (CogView's sandwich-LN).

    Submodules: those of :class:`~plugformer.plugins.blocks.ResidualBlock` (the input norms)
    and ``self_attn_post_norm``, ``cross_attn_post_norm``, ``ffn_post_norm``.
    """

    def __init__(self, parts: BlockParts) -> None:
        super().__init__(parts)
        self.self_attn_post_norm = parts.norm()
        self.cross_attn_post_norm = parts.norm() if parts.cross_attn is not None else None
        self.ffn_post_norm = parts.norm()

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
        attended = self._attend(h, self_mask=self_mask, causal=causal, positions=positions, cache=cache)
        x = x + self.self_attn_post_norm(attended)
        if self._check_memory(memory):
            h = self.cross_attn_norm(x)
            crossed = self._attend_memory(h, memory, memory_mask=memory_mask, cache=cache)
            x = x + self.cross_attn_post_norm(crossed)
        return x + self.ffn_post_norm(self._feed_forward(self.ffn_norm(x)))


def parallel(ctx: BuildContext, parts: BlockParts, /) -> ParallelBlock:
    """Parallel block, x + SelfAttn(Norm(x)) + FFN(Norm(x)) with one shared norm (GPT-J, PaLM)."""
    return ParallelBlock(parts)


def sandwich(ctx: BuildContext, parts: BlockParts, /) -> SandwichBlock:
    """Sandwich-norm block, x + NormOut(Sublayer(NormIn(x))) (CogView, Gemma 2)."""
    return SandwichBlock(parts)


@hookimpl
def plugformer_register(registry) -> None:
    registry.add("block", "parallel", parallel)
    registry.add("block", "sandwich", sandwich)
