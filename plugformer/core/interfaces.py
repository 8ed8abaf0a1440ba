"""The kinds of part: what an attention kernel, a positional encoding, a feed-forward network,
a norm and a block are. Plugins subclass these; the core composes them.

Shape legend used throughout the library:
    B batch, L sequence length (Lq queries, Lk keys), D d_model, H query heads,
    Hkv key/value heads, Dh head dimension.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Callable, ClassVar, Optional

import attrs

from torch import Tensor, nn

if TYPE_CHECKING:
    from plugformer.core.attention import LayerCache, Positions

#: A positional score bias as handed to a kernel: ``score_bias(q_idx, k_idx) -> (H, *shape)`` where
#: ``q_idx`` and ``k_idx`` are integer index tensors into the kernel's own q and k (broadcastable
#: to ``shape``). Sparse kernels call it only where they attend; dense kernels once on the grid.
ScoreBias = Callable[[Tensor, Tensor], Tensor]


class AttentionKernel(nn.Module, ABC):
    """Attention on already-projected, already-split heads:
    softmax(q k^T * scale [+ score_bias]) v.

    Capabilities are declared, not guessed, so that the builder can refuse an impossible
    combination before any tensor exists:

    * ``supports_causal``: honours ``causal=True``.
    * ``supports_bias``: honours a positional ``score_bias`` callable (the capability keeps its
      short name; "bias" elsewhere means a learned bias of a linear layer or norm).
    * ``supports_cache``: correct when ``Lq < Lk`` under ``causal=True`` (queries are the last
      ``Lq`` positions; the mask is aligned bottom-right).
    * ``supports_mask``: honours an arbitrary boolean ``mask``.
    * ``supports_additive_mask``: also takes a float ``mask`` added to the scores (-inf blocks),
      the other mask form of ``F.scaled_dot_product_attention`` and ``nn.Transformer``; absent
      means no.
    * ``uses_cache_state``: ``forward`` also takes ``kv_cache`` (a
      :class:`plugformer.core.cache.KVCache`), which ``MultiHeadAttention`` passes only to kernels
      that declare it, and only when decoding with a cache; ``forward(q, k, v, ...)`` stays the
      whole contract for the rest. ``k`` and ``v`` are then the cache's whole contents
      (``kv_cache.k``, ``kv_cache.v``, the new keys already appended; ``kv_cache.static`` for
      cross-attention). The kernel may keep summaries of the cached keys in ``kv_cache.state``
      under names it owns (prefixed by the kernel's name), to update per step instead of
      re-reading the cache. Tensors there are batch first: beam search reorders them with the
      keys. The state must be exact, a function of the cache contents only: the output must equal
      that of the same call without ``kv_cache``. Absent means no.
    """

    supports_causal: ClassVar[bool] = True
    supports_bias: ClassVar[bool] = False
    supports_cache: ClassVar[bool] = True
    supports_mask: ClassVar[bool] = True

    @abstractmethod
    def forward(self, q: Tensor, k: Tensor, v: Tensor, *, mask: Optional[Tensor] = None,
                causal: bool = False, score_bias: Optional[ScoreBias] = None) -> Tensor:
        """Attend.

        Args:
            q: queries, (B, H, Lq, Dh).
            k, v: keys and values, (B, Hkv, Lk, Dh); ``H % Hkv == 0`` (grouped-query attention
                shares each key/value head among ``H // Hkv`` query heads).
            mask: boolean, True = may attend, broadcastable to (B, H, Lq, Lk). The stacks pass
                key-padding masks shaped (B, 1, 1, Lk).
            causal: query i (at position Lk - Lq + i) attends keys 0..Lk - Lq + i only.
            score_bias: additive positional score bias, see :data:`ScoreBias`. Kernels written
                before 0.2 take it as ``bias=``; the core still passes it so, with a
                ``DeprecationWarning``, for one release.

        Returns:
            (B, H, Lq, Dh). A query row whose keys are all masked gives zeros, never NaN.
        """


class PositionalEncoding(nn.Module):
    """Where token positions enter the model. Three optional hooks, each a no-op by default:

    * ``embed(x, positions)``: added to token embeddings (sinusoidal, learned).
    * ``rotate(q, k, q_pos, k_pos)``: applied to queries and keys (RoPE).
    * ``score_bias(q_pos, k_pos)``: additive attention-score bias (ALiBi, T5).

    ``uses_embed`` / ``uses_rotate`` / ``uses_bias`` (the score bias) declare which hooks do something, so the
    stacks and the builder know without calling them.
    """

    uses_embed: ClassVar[bool] = False
    uses_rotate: ClassVar[bool] = False
    uses_bias: ClassVar[bool] = False

    def embed(self, x: Tensor, positions: Tensor) -> Tensor:
        """x: (B, L, D); positions: (L,) or (B, L) absolute token indices. Returns (B, L, D)."""
        return x

    def rotate(self, q: Tensor, k: Tensor, q_pos: Tensor, k_pos: Tensor) -> tuple[Tensor, Tensor]:
        """q: (B, H, Lq, Dh), k: (B, Hkv, Lk, Dh); positions (Lq,) / (Lk,) or batched."""
        return q, k

    def score_bias(self, q_pos: Tensor, k_pos: Tensor) -> Optional[Tensor]:
        """Positions of any broadcastable shapes -> bias (H, *shape), or None."""
        return None

    def forward(self, x: Tensor, positions: Tensor) -> Tensor:
        return self.embed(x, positions)


class FeedForward(nn.Module, ABC):
    """Position-wise network: (B, L, D) -> (B, L, D).

    ``uses_token_mask`` declares that ``forward(x, *, token_mask=None)`` takes which tokens are
    real, (B, L) bool, True = a real token (None = all real): a part that aggregates over tokens
    (routing statistics, expert capacity, auxiliary losses) must leave padding out. The blocks
    pass it only to parts that declare it, so ``forward(x)`` stays the whole contract for the rest.
    """

    uses_token_mask: ClassVar[bool] = False

    @abstractmethod
    def forward(self, x: Tensor) -> Tensor: ...


class Norm(nn.Module, ABC):
    """Normalisation over the last dimension: (B, L, D) -> (B, L, D)."""

    @abstractmethod
    def forward(self, x: Tensor) -> Tensor: ...


class Block(nn.Module, ABC):
    """One transformer layer: self-attention, optional cross-attention, feed-forward, wired by
    norms and residuals. Submodules are named ``self_attn``, ``cross_attn`` (``None`` in encoder
    and decoder-only blocks), ``ffn`` and the norms the block's wiring needs.

    ``uses_token_mask`` declares that ``forward`` also takes ``token_mask`` (B, L) bool, True = a
    real token, to hand on to a feed-forward part that uses it; the stacks pass it only then.
    """

    uses_token_mask: ClassVar[bool] = False

    @abstractmethod
    def forward(self, x: Tensor, *, memory: Optional[Tensor] = None, self_mask: Optional[Tensor] = None,
                memory_mask: Optional[Tensor] = None, causal: bool = False,
                positions: Optional["Positions"] = None, cache: Optional["LayerCache"] = None) -> Tensor:
        """x: (B, L, D); memory: (B, S, D) encoder output or None. Returns (B, L, D).

        ``self_mask`` / ``memory_mask`` are boolean, True = may attend, broadcastable to
        (B, H, L, L) / (B, H, L, S). ``positions`` carries the positional encoding and the
        absolute positions for the attention hooks; ``cache`` holds this layer's keys/values
        for incremental decoding.
        """

    def _check_memory(self, memory: Optional[Tensor]) -> bool:
        """Whether to run cross-attention: True when the block has it and ``memory`` is given,
        False when it has none and none is given; a clear error on a mismatch."""
        if getattr(self, "cross_attn", None) is None:
            if memory is not None:
                raise ValueError("this block has no cross-attention, but memory was given")
            return False
        if memory is None:
            raise ValueError("this block has cross-attention and needs memory (the encoder output)")
        return True


@attrs.frozen
class BlockParts:
    """The parts a block factory wires together, already built for one layer.

    Attributes:
        self_attn: self-attention (a ``MultiHeadAttention``).
        ffn: the feed-forward network.
        norm: makes a fresh norm each call (a block needs two or three).
        cross_attn: cross-attention over the encoder memory; ``None`` in encoder and
            decoder-only blocks.
        dropout: residual dropout probability.
    """

    self_attn: nn.Module
    ffn: nn.Module
    norm: Callable[[], nn.Module]
    cross_attn: Optional[nn.Module] = None
    dropout: float = 0.0

