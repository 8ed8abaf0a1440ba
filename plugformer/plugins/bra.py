"""``bra``: bi-level routing attention for 1-D token sequences.

Zhu et al., "BiFormer: Vision Transformer with Bi-Level Routing Attention" (CVPR 2023), and for
causal attention Lu et al., "MoBA: Mixture of Block Attention for Long-Context LLMs" (2025).
Keys are cut into regions of ``region`` tokens; a cheap first level picks ``topk`` regions per
query (:mod:`bra_routing`), and the second level is exact softmax attention over the tokens of
the chosen regions only (:mod:`bra_tiles` and :mod:`bra_sparse` on CPU, ``flex_attention`` on
GPU, :mod:`bra_flex`). Cost grows as L * topk * region instead of L ** 2.

Checked against: exact attention (``topk`` covering every region, ``lce=0``), dense attention
under the mask the routing implies (any ``topk``), and the future/padding leak tests in
``tests/plugins/test_bra.py``.
"""

from __future__ import annotations

import math
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from plugformer.core.attention import repeat_kv
from plugformer.core.context import BuildContext
from plugformer.core.interfaces import AttentionKernel, ScoreBias
from plugformer.core.masks import masked_softmax
from plugformer.hooks import hookimpl
from plugformer.plugins import bra_flex
from plugformer.plugins.bra_routing import (
    ROUTINGS, Routing, n_regions, resolve_routing, route, route_map, routed_mask,
)
from plugformer.plugins.bra_sparse import tiled_attention
from plugformer.plugins.bra_tiles import region_tiles, tile_indices, tile_mask, token_tiles

__all__ = ["BiLevelRoutingAttention", "LocalContext", "bra", "route"]

Backend = Literal["auto", "torch", "flex"]
BACKENDS = ("auto", "torch", "flex")

#: Up to this many keys the torch backend computes every score and masks those the routing
#: left out: the same attention as the gathered tiles, and 5x faster at 16 tokens, where the
#: tiles' routing and gathers cost more than the scores they save (``benchmarks/bra_short.py``
#: measures the crossover: 64-128 keys bidirectional, 128-256 causal, on 2 CPU cores).
DENSE_UP_TO = 64


class BiLevelRoutingAttention(AttentionKernel):
    """Each query attends only the tokens of its ``topk`` best key regions.

    Routing (see :func:`route`): ``region`` is BiFormer's (region-mean queries and keys, one
    choice per query region shared by all heads), ``token`` is MoBA's (per query token, the gate
    summed over heads so that one choice serves all heads; causal queries choose among regions
    entirely before their own and always take their own), ``auto`` is token when ``causal`` else
    region. The padded tail of the last region and keys a mask
    blocks never take softmax weight nor enter a region mean. Grouped-query attention
    (Hkv < H), key-padding and general boolean masks, positional biases (evaluated only at the
    attended cells), KV-cache decoding (Lq < Lk, causal) and cross-attention (Lq != Lk) work.

    Equals exact softmax attention when ``topk`` covers every region and ``lce=0``, and dense
    attention under the mask its routing implies for any ``topk``.

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
        backend: ``torch`` (gathered tiles, any device; up to ``DENSE_UP_TO`` keys, every
            score under the routed mask, which is faster there), ``flex`` (``flex_attention``
            with a block mask, CUDA only) or ``auto`` (flex on CUDA without dropout, else
            torch). Default: ``auto``.
        dropout: dropout on the attention weights while training. Default: 0.
        cross: whether queries and keys come from different sequences; when False and
            Lq == Lk, the keys a key-padding mask blocks are padded queries too and stay out of
            the query-region means. Default: False.
    """

    supports_causal = True
    supports_bias = True
    supports_cache = True
    supports_mask = True

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
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        _check_arguments(region=region, topk=topk, routing=routing, lce=lce, scale=scale, backend=backend)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"bra: dropout must be in [0, 1), got {dropout}")
        self.heads, self.head_dim = heads, head_dim
        self.region, self.topk, self.routing = region, topk, routing
        self.scale = head_dim**-0.5 if scale is None else scale
        self.backend, self.dropout, self.cross = backend, dropout, cross
        self.lce = (
            LocalContext(heads=heads, head_dim=head_dim, kernel_size=lce, device=device, dtype=dtype)
            if lce
            else None
        )
        #: Set True (``routes_plot.record_routes`` does) to keep ``last_route_map`` after forward.
        self.record_routes = False
        self.last_route_map: Optional[Tensor] = None

    def extra_repr(self) -> str:
        return (
            f"region={self.region}, topk={self.topk}, routing={self.routing!r}, "
            f"scale={self.scale:.4g}, backend={self.backend!r}, dropout={self.dropout}"
        )

    def forward(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        *,
        mask: Optional[Tensor] = None,
        causal: bool = False,
        bias: Optional[ScoreBias] = None,
    ) -> Tensor:
        """Attend each query to the tokens of its chosen regions.

        Args:
            q: (B, H, Lq, Dh).
            k, v: (B, Hkv, Lk, Dh), ``H % Hkv == 0``.
            mask: boolean, True = may attend, broadcastable to (B, H, Lq, Lk); key-padding
                masks (B, 1, 1, Lk) are the cheap case.
            causal: query i sits at position Lk - Lq + i and sees keys up to it.
            bias: positional score bias ``bias(q_idx, k_idx) -> (H, *shape)``.

        Returns:
            (B, H, Lq, Dh); a query with no key to attend gets zeros.
        """
        b, h, lq, _ = q.shape
        lk = k.shape[2]
        if h % k.shape[1]:
            raise ValueError(f"bra: query heads ({h}) must be a multiple of key/value heads ({k.shape[1]})")
        kind = resolve_routing(self.routing, causal)
        key_valid, general = _split_mask(mask, b, h, lq, lk)
        context = None
        if self.lce is not None:
            context = self.lce(v, heads=h, lq=lq, causal=causal, key_valid=key_valid)
        query_mask = key_valid if kind == "region" and not self.cross and lq == lk else None
        routes = route(
            q, k, region=self.region, topk=self.topk, causal=causal, routing=kind,
            key_mask=key_valid, query_mask=query_mask,
        )  # region: (B, nq, S); token: (B, Lq, S)
        if self.record_routes:
            self.last_route_map = route_map(routes, region=self.region, lq=lq, lk=lk, token=kind == "token")
        dropout = self.dropout if self.training else 0.0
        if self._use_flex(q, dropout):
            out = bra_flex.flex_bra(
                q, k, v, routes, token=kind == "token", region=self.region, causal=causal,
                key_valid=key_valid, mask=general, scale=self.scale, bias=bias,
            )
        elif lk <= DENSE_UP_TO:
            out = self._masked_dense(q, k, v, routes, kind, causal, key_valid, general, bias, dropout)
        else:
            out = self._tiled(q, k, v, routes, kind, causal, key_valid, general, bias, dropout)
        return out if context is None else out + context

    def _masked_dense(self, q, k, v, routes, kind, causal, key_valid, general, bias, dropout) -> Tensor:
        lq, lk = q.shape[2], k.shape[2]
        allowed = routed_mask(routes, token=kind == "token", lq=lq, lk=lk, region=self.region,
                              causal=causal, key_valid=key_valid, mask=general)
        dtype = q.dtype
        if dtype in (torch.float16, torch.bfloat16):  # as the tiles: half inputs, float32 maths
            q, k, v = q.float(), k.float(), v.float()
        scores = q @ repeat_kv(k, q.shape[1]).transpose(-2, -1) * self.scale  # (B, H, Lq, Lk)
        if bias is not None:
            q_idx = torch.arange(lq, device=q.device)[:, None]
            k_idx = torch.arange(lk, device=q.device)[None, :]
            scores = scores + bias(q_idx, k_idx).to(scores.dtype)
        weights = masked_softmax(scores, allowed)
        if dropout:
            weights = F.dropout(weights, dropout)
        return (weights @ repeat_kv(v, q.shape[1])).to(dtype)

    def _tiled(self, q, k, v, routes, kind, causal, key_valid, general, bias, dropout) -> Tensor:
        lq, lk = q.shape[2], k.shape[2]
        nk = n_regions(lk, self.region)
        if kind == "region":
            tiles = region_tiles(routes, lq=lq, nk=nk, region=self.region)
        else:
            tiles = token_tiles(routes, nk=nk, rows_per_tile=self.region)
        geometry = {"lq": lq, "lk": lk, "nk": nk, "region": self.region}
        allowed = tile_mask(tiles, causal=causal, key_valid=key_valid, mask=general, **geometry)
        cell_bias = None
        if bias is not None:
            q_idx, k_idx = tile_indices(tiles, **geometry)
            cell_bias = bias(q_idx[:, :, None], k_idx[:, None, :])
            cell_bias = cell_bias.expand(q.shape[1], *tiles.rows.shape, k_idx.shape[1])  # (H, T, C, S*R)
        return tiled_attention(
            q, k, v, tiles, region=self.region, allowed=allowed, scale=self.scale, bias=cell_bias,
            dropout=dropout,
        )

    def _use_flex(self, q: Tensor, dropout: float) -> bool:
        if self.backend == "torch":
            return False
        if self.backend == "flex":
            if q.device.type != "cuda" or not bra_flex.available():
                raise RuntimeError(
                    f"bra(backend='flex') needs CUDA tensors and torch.nn.attention.flex_attention; "
                    f"got {q.device.type} tensors; use backend='torch' or 'auto'"
                )
            if dropout > 0:
                raise RuntimeError(
                    "bra(backend='flex') has no attention dropout; use backend='auto' to train with dropout"
                )
            return True
        return q.device.type == "cuda" and dropout == 0 and bra_flex.available()


class LocalContext(nn.Module):
    """BiFormer's local-context enhancement: a depthwise 1-d conv over V, added to the output.

    One filter per query-head channel (weight (H * Dh, 1, kernel), channel h * Dh + d): grouped
    key/value heads are repeated to the H query heads first, so the layout does not depend on
    Hkv. Causal attention uses a window that ends at the token; keys a padding mask blocks are
    zeroed first, so padding never reaches real tokens through the conv.

    Args:
        heads: query heads H.
        head_dim: width of a head Dh.
        kernel_size: odd window length.
    """

    def __init__(
        self,
        *,
        heads: int,
        head_dim: int,
        kernel_size: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        channels = heads * head_dim
        self.weight = nn.Parameter(torch.empty(channels, 1, kernel_size, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(channels, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The initialisation of ``nn.Conv1d``."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        bound = 1 / math.sqrt(self.weight.shape[-1])
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(
        self, v: Tensor, *, heads: int, lq: int, causal: bool, key_valid: Optional[Tensor] = None
    ) -> Tensor:
        """v: (B, Hkv, Lk, Dh) -> (B, H, Lq, Dh), the conv at the last Lq positions."""
        b, _, lk, dh = v.shape
        if heads * dh != self.weight.shape[0]:
            raise ValueError(f"bra lce: built for {self.weight.shape[0]} channels, got {heads} heads of {dh}")
        if lq != lk and not causal:
            raise ValueError(
                f"bra lce: the local context needs queries and keys at the same positions "
                f"(self-attention), got Lq={lq}, Lk={lk}; use lce=0 for cross-attention"
            )
        if key_valid is not None:
            v = v * key_valid[:, None, :, None].to(v.dtype)
        x = repeat_kv(v, heads).transpose(-1, -2).reshape(b, heads * dh, lk)  # (B, H*Dh, Lk)
        width = self.weight.shape[-1]
        x = F.pad(x, (width - 1, 0) if causal else (width // 2, width // 2))
        y = F.conv1d(x, self.weight, self.bias, groups=heads * dh)[..., lk - lq :]  # (B, H*Dh, Lq)
        return y.view(b, heads, dh, lq).transpose(-1, -2)


def bra(
    ctx: BuildContext,
    *,
    region: int = 64,
    topk: int = 4,
    routing: Literal["region", "token", "auto"] = "auto",
    lce: int = 0,
    scale: Optional[float] = None,
    backend: Literal["auto", "torch", "flex"] = "auto",
) -> BiLevelRoutingAttention:
    """Bi-level routing attention (BiFormer; MoBA when causal): each query attends its top-k regions.

    Args:
        region: tokens per region.
        topk: regions each query attends (its own included when causal); at most
            ceil(max_len / region).
        routing: region (BiFormer, bidirectional), token (MoBA, per token) or auto (token when
            causal or in a decoder, else region).
        lce: kernel size of the local-context depthwise conv over V (odd); 0 = off.
        scale: score multiplier; none means head_dim ** -0.5.
        backend: auto (flex_attention on CUDA, gathered tiles elsewhere), torch or flex.
    """
    _check_arguments(region=region, topk=topk, routing=routing, lce=lce, scale=scale, backend=backend)
    if routing == "region" and ctx.causal:
        raise ValueError(
            "bra: routing='region' cannot be causal: a region's mean query contains its later "
            "tokens and leaks the future; use routing='token' or 'auto' for causal attention"
        )
    if routing == "region" and ctx.decoder:
        raise ValueError(
            "bra: routing='region' cannot serve a decoder's cross-attention: a region's mean query "
            "contains later decoder tokens, which leaks the future and breaks cached decoding; "
            "use routing='token' or 'auto'"
        )
    if routing == "auto" and ctx.decoder:
        routing = "token"
    most = n_regions(ctx.max_len, region)
    if topk > most:
        raise ValueError(
            f"bra: topk={topk} is more than the {most} regions of max_len={ctx.max_len} with "
            f"region={region}; use topk <= {most} or a smaller region"
        )
    if lce and ctx.cross:
        raise ValueError(
            f"bra: lce={lce} needs self-attention; cross-attention has no local context, use lce=0"
        )
    return BiLevelRoutingAttention(
        heads=ctx.heads, head_dim=ctx.head_dim, region=region, topk=topk, routing=routing, lce=lce,
        scale=scale, backend=backend, dropout=ctx.dropout, cross=ctx.cross, **ctx.factory_kwargs,
    )


@hookimpl
def plugformer_register(registry) -> None:
    registry.add("attention", "bra", bra)


def _check_arguments(*, region, topk, routing, lce, scale, backend) -> None:
    if not isinstance(region, int) or region < 1:
        raise ValueError(f"bra: region must be a whole number of tokens >= 1, got {region!r}")
    if not isinstance(topk, int) or topk < 1:
        raise ValueError(f"bra: topk must be a whole number of regions >= 1, got {topk!r}")
    if routing not in ROUTINGS:
        raise ValueError(f"bra: routing must be one of {', '.join(ROUTINGS)}; got {routing!r}")
    if not isinstance(lce, int) or lce < 0 or (lce and lce % 2 == 0):
        raise ValueError(f"bra: lce must be 0 (off) or an odd kernel size >= 1, got {lce!r}")
    if scale is not None and not scale > 0:
        raise ValueError(f"bra: scale must be > 0 or none (head_dim ** -0.5), got {scale!r}")
    if backend not in BACKENDS:
        raise ValueError(f"bra: backend must be one of {', '.join(BACKENDS)}; got {backend!r}")


def _split_mask(
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
