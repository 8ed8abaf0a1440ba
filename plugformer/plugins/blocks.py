"""Blocks: how attention, feed-forward and norms are wired with residuals.

``post_ln``: y = Norm(x + Sublayer(x)) (Vaswani et al., 2017; ``nn.Transformer`` default).
``pre_ln``: y = x + Sublayer(Norm(x)) (Xiong et al., 2020; ``norm_first=True``), stabler to train
deep and without warm-up.

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

Every block here is a :class:`WiredBlock`: its ``forward`` binds the sublayers to the call's
masks, positions, cache and real tokens, and the subclass's ``wire`` says only where norms and
residuals sit.
"""

from __future__ import annotations

from typing import Callable, Optional

from torch import Tensor, nn

from plugformer.core.attention import LayerCache, Positions
from plugformer.core.context import BuildContext
from plugformer.core.interfaces import Block, BlockParts
from plugformer.hooks import hookimpl

Sublayer = Callable[[Tensor], Tensor]


class WiredBlock(Block):
    """A block whose subclasses only wire sublayers: ``wire(x, attend, cross, feed_forward)``
    gets the self-attention ``attend(h)``, the cross-attention ``cross(h)`` (None without
    memory) and the feed-forward ``feed_forward(h)``, each with this call's masks, positions,
    cache and real tokens and with residual dropout applied. Subclasses set ``self_attn``,
    ``cross_attn``, ``ffn``, ``dropout``.
    """

    uses_token_mask = True

    def forward(self, x: Tensor, *, memory: Optional[Tensor] = None, self_mask: Optional[Tensor] = None,
                memory_mask: Optional[Tensor] = None, causal: bool = False,
                positions: Optional[Positions] = None, cache: Optional[LayerCache] = None,
                token_mask: Optional[Tensor] = None) -> Tensor:
        """x: (B, L, D), memory: (B, S, D) or None -> (B, L, D); token_mask (B, L) bool, True = a
        real token, reaches a feed-forward part that declares ``uses_token_mask``."""
        def attend(h: Tensor) -> Tensor:
            layer_cache = cache.self_attn if cache is not None else None
            out = self.self_attn(h, mask=self_mask, causal=causal, positions=positions, cache=layer_cache)
            return self.dropout(out)

        def cross(h: Tensor) -> Tensor:
            layer_cache = cache.cross_attn if cache is not None else None
            return self.dropout(self.cross_attn(h, memory, mask=memory_mask, cache=layer_cache))

        def feed_forward(h: Tensor) -> Tensor:
            return self.feed_forward(h, token_mask=token_mask)

        return self.wire(x, attend, cross if self._check_memory(memory) else None, feed_forward)

    def feed_forward(self, h: Tensor, *, token_mask: Optional[Tensor] = None) -> Tensor:
        """The feed-forward sublayer with residual dropout: (B, L, D) -> (B, L, D); ``token_mask``
        goes to an ``ffn`` that declares ``uses_token_mask``."""
        if token_mask is not None and getattr(self.ffn, "uses_token_mask", False):
            return self.dropout(self.ffn(h, token_mask=token_mask))
        return self.dropout(self.ffn(h))

    def wire(self, x: Tensor, attend: Sublayer, cross: Optional[Sublayer], feed_forward: Sublayer) -> Tensor:
        """x: (B, L, D) -> (B, L, D), from the sublayers ``attend``, ``cross`` and ``feed_forward``."""
        raise NotImplementedError


class ResidualBlock(WiredBlock):
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


class PostLNBlock(ResidualBlock):
    """y = Norm(x + Sublayer(x)) for each sublayer, as in Vaswani et al. and ``nn.Transformer``."""

    def wire(self, x: Tensor, attend: Sublayer, cross: Optional[Sublayer], feed_forward: Sublayer) -> Tensor:
        x = self.self_attn_norm(x + attend(x))
        if cross is not None:
            x = self.cross_attn_norm(x + cross(x))
        return self.ffn_norm(x + feed_forward(x))


class PreLNBlock(ResidualBlock):
    """y = x + Sublayer(Norm(x)) for each sublayer (``nn.Transformer(norm_first=True)``)."""

    def wire(self, x: Tensor, attend: Sublayer, cross: Optional[Sublayer], feed_forward: Sublayer) -> Tensor:
        x = x + attend(self.self_attn_norm(x))
        if cross is not None:
            x = x + cross(self.cross_attn_norm(x))
        return x + feed_forward(self.ffn_norm(x))


class ParallelBlock(WiredBlock):
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

    def wire(self, x: Tensor, attend: Sublayer, cross: Optional[Sublayer], feed_forward: Sublayer) -> Tensor:
        h = self.norm(x)
        out = x + attend(h)
        if cross is not None:
            out = out + cross(self.cross_attn_norm(out))
        return out + feed_forward(h)


class SandwichBlock(ResidualBlock):
    """y = x + NormOut(Sublayer(NormIn(x))) for each sublayer (CogView's sandwich-LN).

    Submodules: those of :class:`ResidualBlock` (the input norms) and ``self_attn_post_norm``,
    ``cross_attn_post_norm``, ``ffn_post_norm``.
    """

    def __init__(self, parts: BlockParts) -> None:
        super().__init__(parts)
        self.self_attn_post_norm = parts.norm()
        self.cross_attn_post_norm = parts.norm() if parts.cross_attn is not None else None
        self.ffn_post_norm = parts.norm()

    def wire(self, x: Tensor, attend: Sublayer, cross: Optional[Sublayer], feed_forward: Sublayer) -> Tensor:
        x = x + self.self_attn_post_norm(attend(self.self_attn_norm(x)))
        if cross is not None:
            x = x + self.cross_attn_post_norm(cross(self.cross_attn_norm(x)))
        return x + self.ffn_post_norm(feed_forward(self.ffn_norm(x)))


def post_ln(ctx: BuildContext, parts: BlockParts, /) -> PostLNBlock:
    """Post-norm residual block, y = Norm(x + Sublayer(x)) (Vaswani et al., nn.Transformer)."""
    return PostLNBlock(parts)


def pre_ln(ctx: BuildContext, parts: BlockParts, /) -> PreLNBlock:
    """Pre-norm residual block, y = x + Sublayer(Norm(x)) (GPT-2, norm_first=True)."""
    return PreLNBlock(parts)


def parallel(ctx: BuildContext, parts: BlockParts, /) -> ParallelBlock:
    """Parallel block, x + SelfAttn(Norm(x)) + FFN(Norm(x)) with one shared norm (GPT-J, PaLM)."""
    return ParallelBlock(parts)


def sandwich(ctx: BuildContext, parts: BlockParts, /) -> SandwichBlock:
    """Sandwich-norm block, x + NormOut(Sublayer(NormIn(x))) (CogView, Gemma 2)."""
    return SandwichBlock(parts)


@hookimpl
def plugformer_register(registry) -> None:
    registry.add("block", "post_ln", post_ln)
    registry.add("block", "pre_ln", pre_ln)
    registry.add("block", "parallel", parallel)
    registry.add("block", "sandwich", sandwich)
