"""The ``bra`` attention kernel: route, then attend the chosen regions on the fastest path.

Zhu et al., "BiFormer: Vision Transformer with Bi-Level Routing Attention" (CVPR 2023), and for
causal attention Lu et al., "MoBA: Mixture of Block Attention for Long-Context LLMs" (2025).
Keys are cut into regions of ``region`` tokens; a cheap first level picks ``topk`` regions per
query (:mod:`.routing`), and the second level is exact softmax attention over the tokens of the
chosen regions only (:mod:`.cpu` with any device, ``flex_attention`` on CUDA, :mod:`.flex`).
Cost grows as L * topk * region instead of L ** 2.

Checked against: exact attention (``topk`` covering every region, ``lce=0``), dense attention
under the mask the routing implies (any ``topk``), and the future/padding leak tests in
``tests/plugins/bra/test_kernel.py``.
"""

from __future__ import annotations

from typing import Literal, Optional

import torch
from torch import Tensor

from plugformer.core.cache import KVCache
from plugformer.core.interfaces import AttentionKernel, ScoreBias
from plugformer.core.tracing import eager
from plugformer.plugins.bra import decoding
from plugformer.plugins.bra.cpu import gathered, masked_dense, tiled
from plugformer.plugins.bra.flex import available as flex_available
from plugformer.plugins.bra.flex import flex_bra
from plugformer.plugins.bra.grouped import grouped_causal_attention
from plugformer.plugins.bra.local_context import LocalContext
from plugformer.plugins.bra.routing import Geometry, Routing, region_shift, resolve_routing, roll_rows, route

Backend = Literal["auto", "torch", "flex"]
BACKENDS = ("auto", "torch", "flex")


class BiLevelRoutingAttention(AttentionKernel):
    """Each query attends only the tokens of its ``topk`` best key regions.

    Routing (see :func:`.routing.route`): ``region`` is BiFormer's (region-mean queries and keys,
    one choice per query region shared by all heads), ``token`` is MoBA's (per query token, the
    gate summed over heads so that one choice serves all heads; causal queries choose among
    regions entirely before their own and always take their own), ``auto`` is token when
    ``causal`` else region. The padded tail of the last region and keys a mask
    blocks never take softmax weight nor enter a region mean. Grouped-query attention
    (Hkv < H), key-padding and general boolean masks, positional biases (evaluated only at the
    attended cells), KV-cache decoding (Lq < Lk, causal) and cross-attention (Lq != Lk) work.

    Equals exact softmax attention when ``topk`` covers every region and ``lce=0``, and dense
    attention under the mask its routing implies for any ``topk``. Regions are cut by token
    position: a row of a key-padding mask that starts with pads routes and attends exactly as
    its tokens alone (``tests/plugins/bra/test_left_padding.py``).

    The arguments are checked by the factory :func:`plugformer.plugins.bra.bra`, which builds
    this kernel from a spec; built by hand, it trusts them.

    Args:
        heads: query heads H.
        head_dim: width of a head Dh.
        region: tokens per region. Default: 64.
        topk: regions each query attends, its own region included for causal token routing;
            more than the sequence has means all of them. Default: 4.
        routing: ``region``, ``token`` or ``auto``. The cross-attention of a causal decoder needs
            ``token`` (:func:`bra` sees to it): region-mean queries would mix in later decoder
            tokens. Default: ``auto``.
        lce: kernel size of the local-context enhancement, a depthwise conv over V added to the
            output (:class:`LocalContext`); 0 = off. Default: 0.
        scale: multiplies q k^T. Default: head_dim ** -0.5.
        backend: ``torch`` (any device), ``flex`` (``flex_attention`` with a block mask, CUDA
            only) or ``auto`` (flex on CUDA without dropout, else torch). Default: ``auto``.
        dropout: dropout on the attention weights while training. Default: 0.
        cross: whether queries and keys come from different sequences; when False and
            Lq == Lk, the keys a key-padding mask blocks are padded queries too and stay out of
            the query-region means. Default: False.
        dense_up_to: up to this many keys the torch backend computes every score and masks
            those the routing left out (:func:`.cpu.masked_dense`); longer inputs gather tiles
            (:func:`.cpu.tiled`). Both give the same attention; the masked one is 5x faster at
            16 tokens, where the tiles' routing and gathers cost more than the scores they save
            (``benchmarks/bra_short.py`` measures the crossover: 64-128 keys bidirectional,
            128-256 causal, on 2 CPU cores). 0 = always tiles. Default: 64.
        grouped_from: causal token-routed self-attention (Lq = Lk) over at least this many keys,
            without a general mask or dropout, takes MoBA's grouped layout
            (:func:`.grouped.grouped_causal_attention`): the (query, chosen region) pairs sorted
            by region, so the work is Lq * topk * region scores whatever the routing, where the
            tiles gather, for a tile of neighbouring queries, the union of what they chose.
            Same attention; below it (and above ``dense_up_to``) the tiles. A cached step of token
            routing (Lq < Lk, at most ``region`` queries) gathers each query's chosen regions for
            it alone (:func:`.cpu.gathered`): topk * region keys, not the cache. The grouped
            layout beats the tiles from 128 keys (1.5x there, 2.3x at 256, forward+backward, 8
            heads of 64, region 64, topk 4, one thread). Default: 128.
    """

    supports_causal = True
    supports_bias = True
    supports_cache = True
    supports_mask = True
    uses_cache_state = True

    def __init__(
        self,
        *,
        heads: int,
        head_dim: int,
        region: int = 64,
        topk: int = 4,
        routing: Routing = "auto",
        lce: int = 0,
        scale: Optional[float] = None,
        backend: Backend = "auto",
        dropout: float = 0.0,
        cross: bool = False,
        dense_up_to: int = 64,
        grouped_from: int = 128,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.region, self.topk, self.routing = region, topk, routing
        self.scale = head_dim**-0.5 if scale is None else scale
        self.backend, self.dropout, self.cross = backend, dropout, cross
        self.dense_up_to, self.grouped_from = dense_up_to, grouped_from
        self.lce = (
            LocalContext(heads=heads, head_dim=head_dim, kernel_size=lce, device=device, dtype=dtype)
            if lce
            else None
        )

    def extra_repr(self) -> str:
        return (
            f"region={self.region}, topk={self.topk}, routing={self.routing!r}, "
            f"scale={self.scale:.4g}, backend={self.backend!r}, dropout={self.dropout}, "
            f"dense_up_to={self.dense_up_to}, grouped_from={self.grouped_from}"
        )

    def forward(self, q: Tensor, k: Tensor, v: Tensor, *, mask: Optional[Tensor] = None,
                causal: bool = False, score_bias: Optional[ScoreBias] = None,
                kv_cache: Optional[KVCache] = None) -> Tensor:
        """Attend each query to the tokens of its chosen regions: (B, H, Lq, Dh) out.

        q is (B, H, Lq, Dh), k and v (B, Hkv, Lk, Dh) with ``H % Hkv == 0``; ``mask`` is boolean,
        True = may attend, broadcastable to (B, H, Lq, Lk) (key-padding masks (B, 1, 1, Lk) are
        the cheap case); with ``causal`` query i sits at position Lk - Lq + i and sees keys up to
        it; ``score_bias(q_idx, k_idx) -> (H, *shape)`` is a positional score bias. A query with no key
        to attend gets zeros. ``kv_cache``: the decoding cache whose contents k and v are
        (``uses_cache_state``); causal token routing without a mask keeps its region means there
        (:mod:`.decoding`), so that a step does not re-read every cached key to route. Same output
        with or without it.
        """
        b, h, lq, _ = q.shape
        key_valid, general = split_mask(mask, b, h, lq, k.shape[2])
        context = None
        if self.lce is not None:
            context = self.lce(v, heads=h, lq=lq, causal=causal, key_valid=key_valid)
        shift = None if general is not None else region_shift(key_valid, self.region)
        if shift is not None:
            out = self._attend_aligned(q, k, v, shift, key_valid, causal=causal, score_bias=score_bias)
        else:
            out = self._attend(q, k, v, key_valid, general, causal=causal, score_bias=score_bias,
                               kv_cache=kv_cache)
        return out if context is None else out + context

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, key_valid: Optional[Tensor], general: Optional[Tensor],
                *, causal: bool, score_bias: Optional[ScoreBias], kv_cache: Optional[KVCache] = None) -> Tensor:
        """Route and attend with regions cut from index 0: (B, H, Lq, Dh)."""
        geometry = self.geometry(q, k, causal=causal)
        key_means = None
        masked = key_valid is not None or general is not None
        if not self.cross and decoding.usable(kv_cache, token=geometry.token, causal=causal, masked=masked,
                                              lq=geometry.lq, lk=geometry.lk):
            with torch.no_grad():
                key_means = decoding.cached_key_means(k, kv_cache.state, self.region)  # (B, Hkv, nk, Dh)
        routes = self._route(q, k, geometry, key_valid, key_means=key_means)
        dropout = self.dropout if self.training else 0.0
        if self._use_flex(q, dropout):
            attend, options = flex_bra, {}
        elif geometry.lk <= self.dense_up_to:
            attend, options = masked_dense, {"dropout": dropout}
        elif geometry.token and geometry.lq < geometry.lk and geometry.lq <= self.region:
            attend, options = gathered, {"dropout": dropout}
        elif self._use_grouped(geometry, general, score_bias, dropout):
            return grouped_causal_attention(q, k, v, routes, region=self.region, scale=self.scale,
                                            key_valid=key_valid)
        else:
            attend, options = tiled, {"dropout": dropout}
        return attend(q, k, v, routes, geometry, scale=self.scale, key_valid=key_valid, mask=general,
                      score_bias=score_bias, **options)

    def _attend_aligned(self, q: Tensor, k: Tensor, v: Tensor, shift: Tensor, key_valid: Tensor, *,
                        causal: bool, score_bias: Optional[ScoreBias]) -> Tensor:
        """Attend with regions cut by token position: each row rolled left by ``shift`` (its
        leading pads modulo the region), so that a region starts at every multiple of ``region``
        real tokens, exactly as for the same tokens alone; the wrapped indices are pads.

        Self-attention rolls the queries with the keys, which keeps every query-key distance of
        real tokens and the bottom-right causal alignment. Queries fewer than keys (a cached
        decoding step) are set at their key positions in a window of the last ``Lq + max(shift)``
        positions, zeros in front, so a step computes at most Lq + region - 1 query rows, not Lk;
        token routing and causality see each query where the rolled keys put it. Region routing
        (query regions cut by position) takes the window of all Lk positions. Cross-attention
        rolls the keys only. (B, H, Lq, Dh) out.
        """
        lq, lk = q.shape[2], k.shape[2]
        k, v, key_valid = roll_rows(k, shift, 2), roll_rows(v, shift, 2), roll_rows(key_valid, shift, 1)
        if self.cross or lq > lk:
            return self._attend(q, k, v, key_valid, None, causal=causal, score_bias=score_bias)
        q, front = self._window(q, shift, lk, causal=causal)
        if front and score_bias is not None:
            score_bias = _queries_from(score_bias, front)
        out = self._attend(q, k, v, key_valid, None, causal=causal, score_bias=score_bias)
        return roll_rows(out, -shift, 2)[:, :, front:]

    def _window(self, q: Tensor, shift: Tensor, lk: int, *, causal: bool) -> tuple[Tensor, int]:
        """Self-attention queries set at their key positions and rolled with the keys: (B, H, W, Dh)
        and the W - Lq zero rows in front (see :meth:`_attend_aligned`)."""
        lq = q.shape[2]
        token = resolve_routing(self.routing, causal) == "token"
        # Compiled, every cached step takes the whole window: its size may not depend on values.
        front = (min(lk, lq + int(shift.max())) if token and eager() else lk) - lq
        if front:
            q = torch.cat([q.new_zeros(*q.shape[:2], front, q.shape[3]), q], dim=2)  # (B, H, W, Dh)
        return roll_rows(q, shift, 2), front

    def geometry(self, q: Tensor, k: Tensor, *, causal: bool = False) -> Geometry:
        """The lengths, region, routing kind and causality of attending ``q`` to ``k``."""
        if q.shape[1] % k.shape[1]:
            raise ValueError(
                f"bra: query heads ({q.shape[1]}) must be a multiple of key/value heads ({k.shape[1]})"
            )
        token = resolve_routing(self.routing, causal) == "token"
        return Geometry(lq=q.shape[2], lk=k.shape[2], region=self.region, token=token, causal=causal)

    def route(self, q: Tensor, k: Tensor, *, mask: Optional[Tensor] = None, causal: bool = False) -> Tensor:
        """The key regions :meth:`forward` would attend for these queries and keys.

        Args: as :meth:`forward`. Returns: region indices, -1 in empty slots, (B, nq, S) for
        region routing and (B, Lq, S) for token routing (``self.geometry(q, k).token``). With a
        key-padding mask whose rows start with pads, region j of row b holds the keys at indices
        ``shift[b] + j * region`` onwards, ``shift = region_shift(key_valid, region)``, so that
        regions are cut by token position; self-attention rows are rolled left by ``shift`` before
        routing, queries as well when Lq = Lk (see :meth:`_attend_aligned`); the token routes of
        fewer queries (a cached step) come one row per query, in order.
        """
        lq, lk = q.shape[2], k.shape[2]
        key_valid, general = split_mask(mask, q.shape[0], q.shape[1], lq, lk)
        shift = None if general is not None else region_shift(key_valid, self.region)
        if shift is None:
            return self._route(q, k, self.geometry(q, k, causal=causal), key_valid)
        k, key_valid = roll_rows(k, shift, 2), roll_rows(key_valid, shift, 1)
        if self.cross or lq > lk:
            return self._route(q, k, self.geometry(q, k, causal=causal), key_valid)
        window, front = self._window(q, shift, lk, causal=causal)
        routes = self._route(window, k, self.geometry(window, k, causal=causal), key_valid)
        if lq == lk or not self.geometry(q, k, causal=causal).token:
            return routes
        return roll_rows(routes, -shift, 1)[:, front:]  # (B, Lq, S), one row per query

    def _route(self, q: Tensor, k: Tensor, geometry: Geometry, key_valid: Optional[Tensor], *,
               key_means: Optional[Tensor] = None) -> Tensor:
        self_region = not geometry.token and not self.cross and geometry.lq == geometry.lk
        return route(
            q, k, region=self.region, topk=self.topk, causal=geometry.causal,
            routing="token" if geometry.token else "region", key_mask=key_valid,
            query_mask=key_valid if self_region else None, key_means=key_means,
        )  # region: (B, nq, S); token: (B, Lq, S)

    def _use_grouped(self, geometry: Geometry, general: Optional[Tensor], score_bias: Optional[ScoreBias],
                     dropout: float) -> bool:
        g = geometry
        return (g.token and g.causal and g.lq == g.lk >= self.grouped_from and not self.cross
                and general is None and score_bias is None and dropout == 0)

    def _use_flex(self, q: Tensor, dropout: float) -> bool:
        if self.backend == "torch":
            return False
        if self.backend == "flex":
            if q.device.type != "cuda" or not flex_available():
                raise RuntimeError(
                    f"bra(backend='flex') needs CUDA tensors and torch.nn.attention.flex_attention; "
                    f"got {q.device.type} tensors; use backend='torch' or 'auto'"
                )
            if dropout > 0:
                raise RuntimeError(
                    "bra(backend='flex') has no attention dropout; use backend='auto' to train with dropout"
                )
            return True
        return q.device.type == "cuda" and dropout == 0 and flex_available()


def _queries_from(score_bias: ScoreBias, front: int) -> ScoreBias:
    """A score bias over queries set ``front`` places later than the ones it was bound to."""

    def shifted(q_idx: Tensor, k_idx: Tensor) -> Tensor:
        return score_bias(q_idx - front, k_idx)

    return shifted


def split_mask(
    mask: Optional[Tensor], b: int, h: int, lq: int, lk: int
) -> tuple[Optional[Tensor], Optional[Tensor]]:
    """A boolean attend-mask -> (which keys are real (B, Lk), the mask (B, Hm, Lq, Lk) view or
    None when it only marks key padding)."""
    if mask is None:
        return None, None
    if mask.dtype != torch.bool:
        raise TypeError(f"bra: mask must be boolean (True = may attend), got {mask.dtype}")
    if mask.dim() > 4:
        raise ValueError(f"bra: mask must broadcast to (B, H, Lq, Lk), got shape {tuple(mask.shape)}")
    mask = mask.reshape((1,) * (4 - mask.dim()) + tuple(mask.shape))
    if any(size not in (1, want) for size, want in zip(mask.shape, (b, h, lq, lk))):
        raise ValueError(
            f"bra: mask of shape {tuple(mask.shape)} does not broadcast to (B={b}, H={h}, Lq={lq}, Lk={lk})"
        )
    key_valid = mask.any(dim=2).any(dim=1).expand(b, lk)  # (B, Lk)
    if mask.shape[1] == 1 and mask.shape[2] == 1:
        return key_valid, None
    return key_valid, mask.expand(b, -1, lq, lk)
