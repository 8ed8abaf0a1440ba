"""The KV cache of incremental decoding: keys and values of earlier steps, kept per layer.

A :class:`KVCache` holds its keys and values in buffers that grow geometrically, as a vector
does, and writes each step's new keys in place: appending a token costs its own size, amortized,
not a copy of the whole cache (``torch.cat`` per step made a decoding step O(L) in memory traffic
per layer, more than fused attention's own read of the cache at 8,192 tokens). ``cache.k`` and
``cache.v`` are views ``buffer[:, :, :len(cache)]`` of it, so kernels must accept non-contiguous
keys and values (they already accept the packed projections' views). ``reserve`` allocates the
final size at once, as Hugging Face's ``StaticCache`` preallocates; ``generate`` reserves the
prompt plus ``max_new_tokens``.

``KVCache.state`` is a dictionary a kernel may keep per-layer decoding summaries in (the kept
region means of bi-level routing attention): kernels that declare ``uses_cache_state`` receive the
cache (see :class:`plugformer.core.interfaces.AttentionKernel`). The core knows nothing of what
is in it; ``reorder`` reorders its tensors with the keys.
"""

from __future__ import annotations

from typing import Any, Optional

import attrs
import torch
from torch import Tensor


class KVCache:
    """Keys and values of one attention layer, kept between decoding steps.

    ``k``, ``v``: (B, Hkv, L, Dh) views of buffers (B, Hkv, capacity, Dh), or None before the
    first :meth:`append`. Capacity grows to ``max(needed, 2 * capacity, reserved)`` when an
    append does not fit, so L single-token appends copy O(L) elements in all. Memory: at most
    twice the keys and values held (just after a growth), three times for the moment of the
    copy; exactly the reserved size when :meth:`reserve` covered every append.

    While autograd records (grad mode on and the new keys or values require grad), appends copy
    out of place, as ``torch.cat`` did, so that keys saved for backward are never overwritten.

    Args:
        k, v: initial keys and values (B, Hkv, L, Dh), or None for an empty cache.
        static: computed once and reused (cross-attention over the encoder output): the
            attention fills it on its first call and reads it afterwards.

    Attributes:
        state: per-layer decoding state of the kernel (``uses_cache_state``), name -> value;
            :meth:`reorder` index-selects every tensor value along dim 0 (batch first), other
            values are kept as they are (they must not depend on the batch row).
    """

    def __init__(self, k: Optional[Tensor] = None, v: Optional[Tensor] = None, static: bool = False) -> None:
        self.static = static
        self.state: dict[str, Any] = {}
        self._keys: Optional[Tensor] = None  # (B, Hkv, capacity, Dh)
        self._values: Optional[Tensor] = None
        self._length = 0
        self._reserved = 0
        if (k is None) != (v is None):
            raise ValueError("KVCache: give both k and v, or neither")
        if k is not None:
            self.append(k, v)

    def __repr__(self) -> str:
        shape = None if self._keys is None else tuple(self._keys.shape)
        return f"KVCache(length={self._length}, buffer={shape}, static={self.static})"

    def __len__(self) -> int:
        return self._length

    @property
    def k(self) -> Optional[Tensor]:
        """Keys (B, Hkv, L, Dh), a view of the buffer; None before the first append."""
        return _used(self._keys, self._length)

    @property
    def v(self) -> Optional[Tensor]:
        """Values (B, Hkv, L, Dh), a view of the buffer; None before the first append."""
        return _used(self._values, self._length)

    @property
    def capacity(self) -> int:
        """Tokens the buffers hold before the next append must grow them."""
        return 0 if self._keys is None else self._keys.shape[-2]

    def reserve(self, capacity: int) -> None:
        """Make room for ``capacity`` tokens in all: now if the buffers exist, else at the first
        append (whose batch, heads and dtype are not known before). Never shrinks. Raises
        ``ValueError`` for a negative ``capacity``."""
        if capacity < 0:
            raise ValueError(f"KVCache.reserve: capacity must be >= 0, got {capacity}")
        self._reserved = max(self._reserved, capacity)
        if self._keys is not None and capacity > self.capacity:
            self._grow(capacity, self._keys.dtype)

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Add new keys/values (B, Hkv, Ln, Dh) at the end and return all of them, (B, Hkv, L, Dh)
        views. New keys of a wider dtype widen the cache (``torch.promote_types``, as
        ``torch.cat`` would). Raises ``ValueError`` when k or v is not 4-d, when B, Hkv, Dh or the
        device differ from the cached ones (the message names which), or k and v disagree."""
        if k.dim() != 4 or v.dim() != 4:
            raise ValueError(f"KVCache.append: k and v must be 4-d (B, Hkv, Ln, Dh); got {tuple(k.shape)} and "
                             f"{tuple(v.shape)}")
        if k.shape[:2] + k.shape[3:] != v.shape[:2] + v.shape[3:] or k.shape[2] != v.shape[2]:
            raise ValueError(f"KVCache.append: k {tuple(k.shape)} and v {tuple(v.shape)} must be "
                             "(B, Hkv, Ln, Dh) alike")
        if self._keys is None and self.static:  # computed once: keep the tensors, no copy
            self._keys, self._values, self._length = k, v, k.shape[2]
            return k, v
        if self._keys is not None:
            self._check_like(self._keys, k, "k")
            self._check_like(self._values, v, "v")
        end = self._length + k.shape[2]
        dtype = k.dtype if self._keys is None else torch.promote_types(self._keys.dtype, k.dtype)
        if torch.is_grad_enabled() and (k.requires_grad or v.requires_grad):
            self._keys = k if self._keys is None else torch.cat([self.k.to(dtype), k.to(dtype)], dim=2)
            self._values = v if self._values is None else torch.cat([self.v.to(dtype), v.to(dtype)], dim=2)
            self._length = end
            return self._keys, self._values
        if self._keys is None:
            self._keys = k.new_empty(*k.shape[:2], max(end, self._reserved), k.shape[3], dtype=dtype)
            self._values = v.new_empty(*v.shape[:2], max(end, self._reserved), v.shape[3], dtype=dtype)
        elif end > self.capacity or dtype != self._keys.dtype:
            self._grow(max(end, 2 * self.capacity, self._reserved), dtype)
        self._keys[:, :, self._length:end] = k
        self._values[:, :, self._length:end] = v
        self._length = end
        return self.k, self.v

    def reorder(self, index: Tensor) -> None:
        """Keep batch rows ``index`` (beam search), of the keys, values and tensors in ``state``.
        Raises ``IndexError`` for a row the cache does not have."""
        if self._keys is not None and index.numel() and (int(index.min()) < 0 or int(index.max()) >= len(self._keys)):
            raise IndexError(f"KVCache.reorder: index must hold batch rows in [0, {len(self._keys)}); got values in "
                             f"[{int(index.min())}, {int(index.max())}]")
        if self._keys is not None:
            self._keys = self._keys.index_select(0, index)
            self._values = self._values.index_select(0, index)
        for name, value in self.state.items():
            if isinstance(value, Tensor):
                self.state[name] = value.index_select(0, index)

    def _grow(self, capacity: int, dtype: torch.dtype) -> None:
        keys, values = self._keys, self._values
        self._keys = keys.new_empty(*keys.shape[:2], capacity, keys.shape[3], dtype=dtype)
        self._values = values.new_empty(*values.shape[:2], capacity, values.shape[3], dtype=dtype)
        self._keys[:, :, : self._length] = keys[:, :, : self._length]
        self._values[:, :, : self._length] = values[:, :, : self._length]

    @staticmethod
    def _check_like(buffer: Tensor, new: Tensor, name: str) -> None:
        if buffer.device != new.device:
            raise ValueError(f"KVCache.append: {name} is on {new.device}, the cached keys on {buffer.device}")
        for dim, label in ((0, "batch B"), (1, "key/value heads Hkv"), (3, "head width Dh")):
            if new.shape[dim] != buffer.shape[dim]:
                raise ValueError(
                    f"KVCache.append: {name} has {label} = {new.shape[dim]} (shape {tuple(new.shape)}), the "
                    f"cache holds {buffer.shape[dim]}; new keys/values must be (B, Hkv, Ln, Dh) = "
                    f"({buffer.shape[0]}, {buffer.shape[1]}, Ln, {buffer.shape[3]})"
                )


def _used(buffer: Optional[Tensor], length: int) -> Optional[Tensor]:
    if buffer is None or buffer.shape[2] == length:
        return buffer
    return buffer[:, :, :length]  # (B, Hkv, L, Dh) view


@attrs.define
class LayerCache:
    """The caches of one block: its self-attention and (for decoders) its cross-attention."""

    self_attn: KVCache = attrs.Factory(KVCache)
    cross_attn: KVCache = attrs.Factory(lambda: KVCache(static=True))

    def reorder(self, index: Tensor) -> None:
        """Keep batch rows ``index`` of both caches (beam search)."""
        self.self_attn.reorder(index)
        self.cross_attn.reorder(index)

    def reserve(self, capacity: int) -> None:
        """Room for ``capacity`` tokens in the self-attention cache (see :meth:`KVCache.reserve`)."""
        self.self_attn.reserve(capacity)
