"""MultiHeadAttention: the q/k/v/out projections around any attention kernel.

The projections have fixed names (``q_proj``, ``k_proj``, ``v_proj``, ``out_proj``), so a model's
state dict does not depend on its kernel: weights trained with ``dense`` load into ``fused`` or
``bra``. Kernel-only parameters live under ``kernel.``.
"""

from __future__ import annotations

import inspect
import warnings
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from plugformer.core import masks
from plugformer.core.cache import KVCache, LayerCache  # noqa: F401  (LayerCache: re-exported)
from plugformer.core.interfaces import AttentionKernel, PositionalEncoding, ScoreBias
from plugformer.core.tracing import eager


class Positions(NamedTuple):
    """What attention needs to apply a positional encoding's ``rotate`` and ``score_bias`` hooks.

    A ``NamedTuple`` (immutable, like the attrs class it replaced) because ``torch.compile``
    traces tuples but not attrs' generated ``__init__``.

    Attributes:
        encoding: the positional encoding of the stack.
        offset: absolute position of the first token of the current input (the cache length
            when decoding incrementally).
    """

    encoding: PositionalEncoding
    offset: int = 0


def repeat_kv(x: Tensor, heads: int) -> Tensor:
    """(B, Hkv, L, Dh) -> (B, heads, L, Dh), each key/value head shared by heads // Hkv queries."""
    kv_heads = x.shape[1]
    if kv_heads == heads:
        return x
    return x.repeat_interleave(heads // kv_heads, dim=1)


class MultiHeadAttention(nn.Module):
    """Projections, head split, positional hooks and cache around an :class:`AttentionKernel`.

    Args:
        d_model: width of the input and output.
        heads: number of query heads.
        kv_heads: number of key/value heads (grouped-query attention when < heads).
        head_dim: width of each head.
        kernel: the attention kernel.
        bias: whether the projections have learned biases. Default: True.
        kdim: width of the key/value input (cross-attention from a wider memory). Default: d_model.
        q_norm, k_norm: optional norms applied per head to queries and keys (over Dh), before
            any rotation (QK-norm).
    """

    def __init__(
        self,
        *,
        d_model: int,
        heads: int,
        kv_heads: int,
        head_dim: int,
        kernel: AttentionKernel,
        bias: bool = True,
        kdim: Optional[int] = None,
        q_norm: Optional[nn.Module] = None,
        k_norm: Optional[nn.Module] = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if heads % kv_heads:
            raise ValueError(f"heads ({heads}) must be a multiple of kv_heads ({kv_heads})")
        kdim = d_model if kdim is None else kdim
        fk = {"device": device, "dtype": dtype}
        self.heads = heads
        self.kv_heads = kv_heads
        self.head_dim = head_dim
        self.q_proj = nn.Linear(d_model, heads * head_dim, bias=bias, **fk)
        self.k_proj = nn.Linear(kdim, kv_heads * head_dim, bias=bias, **fk)
        self.v_proj = nn.Linear(kdim, kv_heads * head_dim, bias=bias, **fk)
        self.out_proj = nn.Linear(heads * head_dim, d_model, bias=bias, **fk)
        self.q_norm = q_norm or nn.Identity()
        self.k_norm = k_norm or nn.Identity()
        self.kernel = kernel
        self._score_bias_keyword = (type(kernel), score_bias_keyword(kernel))

    def forward(
        self,
        x: Tensor,
        memory: Optional[Tensor] = None,
        *,
        mask: Optional[Tensor] = None,
        causal: bool = False,
        positions: Optional[Positions] = None,
        cache: Optional[KVCache] = None,
    ) -> Tensor:
        """Self-attention (``memory is None``) or cross-attention over ``memory``.

        Args:
            x: (B, Lq, D) queries' input.
            memory: (B, Lk, Dk) keys' and values' input for cross-attention.
            mask: boolean, True = may attend, broadcastable to (B, H, Lq, Lk_total), or an
                additive float mask (kernels that ``supports_additive_mask``); a 3-D mask is
                nn.Transformer's (B·H, Lq, Lk_total).
            causal: bottom-right causal masking (decoder self-attention).
            positions: positional encoding hooks and the absolute offset of ``x``.
            cache: keys/values of earlier steps; appended to (self-attention) or computed once
                and reused (cross-attention). Handed on as ``kv_cache=`` to a kernel that declares
                ``uses_cache_state``.

        Returns:
            (B, Lq, D).
        """
        if cache is not None and cache.static and cache.k is not None:
            q = self.q_norm(self._split(self.q_proj(x), self.heads))  # (B, H, Lq, Dh)
            k, v = cache.k, cache.v
        else:
            q, k, v = self._project(x, memory)
            q = self.q_norm(self._split(q, self.heads))  # (B, H, Lq, Dh)
            k = self.k_norm(self._split(k, self.kv_heads))  # (B, Hkv, Lk, Dh)
            v = self._split(v, self.kv_heads)
            if positions is not None and positions.encoding.uses_rotate:
                q_pos = _arange(positions.offset, q.shape[-2], q.device)
                k_pos = _arange(positions.offset, k.shape[-2], k.device)
                q, k = positions.encoding.rotate(q, k, q_pos, k_pos)
            if cache is not None:
                k, v = cache.append(k, v)
        score_bias = _score_bias_for(positions, q.shape[-2], k.shape[-2])
        if type(self.kernel) is not self._score_bias_keyword[0]:  # the kernel was swapped
            self._score_bias_keyword = (type(self.kernel), score_bias_keyword(self.kernel))
        keyword = self._score_bias_keyword[1]
        mask = masks.unflatten_heads(mask, q.shape[0], self.heads, q.shape[-2], k.shape[-2])
        if mask is not None and mask.is_floating_point() and not getattr(self.kernel, "supports_additive_mask", False):
            raise ValueError(
                f"attention kernel {type(self.kernel).__name__} takes boolean masks only; a float "
                "mask with values other than 0 and -inf (an additive bias) needs dense or fused"
            )
        extra = {keyword: score_bias}
        if cache is not None and getattr(self.kernel, "uses_cache_state", False):
            extra["kv_cache"] = cache  # k, v are its whole contents; see AttentionKernel
        out = self.kernel(q, k, v, mask=mask, causal=causal, **extra)  # (B, H, Lq, Dh)
        return self.out_proj(out.transpose(1, 2).flatten(2))  # (B, Lq, H*Dh) -> (B, Lq, D)

    def _project(self, x: Tensor, memory: Optional[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """q, k, v before the head split: (B, Lq, H*Dh), (B, Lk, Hkv*Dh), (B, Lk, Hkv*Dh).

        Projections of the same input run as one matmul (q, k, v in self-attention; k, v in
        cross-attention), as ``nn.MultiheadAttention``'s packed ``in_proj`` does: 0-7% faster
        per layer at d_model 512 on 2 CPU cores, most of it in backward. The three outputs are
        views into one tensor (kernels must not assume they are contiguous). Inputs of fewer
        than ``PACK_FROM_ROWS`` tokens (a decoding step) take the three matmuls apart: stacking
        the weights would copy them every call, as much memory traffic as the matmuls.
        """
        if memory is None:
            return _linears(x, self.q_proj, self.k_proj, self.v_proj)
        return (self.q_proj(x), *_linears(memory, self.k_proj, self.v_proj))

    @staticmethod
    def _split(x: Tensor, heads: int) -> Tensor:
        return x.unflatten(-1, (heads, -1)).transpose(1, 2)  # (B, L, H*Dh) -> (B, H, L, Dh)


#: Inputs with at least this many tokens (B * L) run their projections as one packed matmul
#: (see ``MultiHeadAttention._project``). Below it, stacking the weights (3 * D * D copied per
#: call) costs as much as the matmuls themselves: 1.1 ms of a 4.5 ms decoding step of
#: ``gpt_tiny(d_model=512)`` on one thread.
PACK_FROM_ROWS = 64


def _linears(x: Tensor, *linears: nn.Module) -> tuple[Tensor, ...]:
    """Each of ``linears`` applied to ``x``; one matmul over the stacked weights when all are
    plain ``nn.Linear`` without hooks (anything else, say a LoRA wrapper, is called as is) and
    ``x`` holds at least ``PACK_FROM_ROWS`` tokens (always under ``torch.compile`` / export, where
    testing the length would specialise a dynamic shape)."""
    many = not eager() or x.shape[:-1].numel() >= PACK_FROM_ROWS  # traced: no guard on the shape
    packable = many and all(
        type(lin) is nn.Linear and not (lin._forward_hooks or lin._forward_pre_hooks) for lin in linears
    ) and len({lin.bias is None for lin in linears}) == 1
    if not packable:
        return tuple(lin(x) for lin in linears)
    weight = torch.cat([lin.weight for lin in linears])
    bias = None if linears[0].bias is None else torch.cat([lin.bias for lin in linears])
    return F.linear(x, weight, bias).split([lin.out_features for lin in linears], dim=-1)


def _arange(start: int, n: int, device: torch.device) -> Tensor:
    return torch.arange(start, start + n, device=device)


def score_bias_keyword(kernel: nn.Module) -> str:
    """The keyword by which ``kernel.forward`` takes the positional score bias: ``score_bias``,
    or ``bias`` for a kernel written before the rename, which warns (``DeprecationWarning``,
    naming the kernel) and keeps working for one release."""
    try:
        params = inspect.signature(kernel.forward).parameters
    except (TypeError, ValueError):
        return "score_bias"
    if "score_bias" in params or "bias" not in params:
        return "score_bias"
    warnings.warn(
        f"attention kernel {type(kernel).__module__}.{type(kernel).__qualname__} takes the "
        "positional score bias as forward(..., bias=); rename that argument to score_bias= "
        "(bias= is deprecated and will stop working in the next release)",
        DeprecationWarning,
        stacklevel=3,
    )
    return "bias"


def score_bias_grid(score_bias: ScoreBias, lq: int, lk: int, device: torch.device) -> Tensor:
    """A score bias evaluated on every (query, key) pair of Lq queries and Lk keys: (H, Lq, Lk)."""
    q_idx = torch.arange(lq, device=device)[:, None]
    k_idx = torch.arange(lk, device=device)[None, :]
    return score_bias(q_idx, k_idx)


def _score_bias_for(positions: Optional[Positions], lq: int, lk: int) -> Optional[ScoreBias]:
    """Bind a positional encoding's score_bias to absolute positions: score_bias(q_idx, k_idx).

    The queries start at ``positions.offset``; the keys end where the queries end (a cache holds
    the keys before them).
    """
    if positions is None or not positions.encoding.uses_bias:
        return None
    encoding = positions.encoding
    q_start = positions.offset
    k_start = positions.offset + lq - lk

    def score_bias(q_idx: Tensor, k_idx: Tensor) -> Tensor:
        return encoding.score_bias(q_idx + q_start, k_idx + k_start)

    return score_bias
