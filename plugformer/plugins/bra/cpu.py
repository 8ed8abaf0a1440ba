"""The two torch paths of bi-level routing attention, for any device.

* :func:`masked_dense`: every score, then the mask the routing implies. Short inputs take it:
  the routing and gathers of the tiles cost more than the scores they save.
* :func:`tiled`: only the scores of the chosen regions, over the tiles of :mod:`.tiles` by the
  flash-style attention of :mod:`.sparse`. Long inputs take it.
* :func:`gathered`: each query's chosen regions gathered for it alone. A cached decoding step
  (a few token-routed queries, a long cache) takes it: it reads topk * region keys per query,
  where a tile of ``region`` rows would hold one filled row.

All give the same attention (``tests/plugins/bra/test_kernel.py`` runs every test on each).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from plugformer.core.attention import repeat_kv
from plugformer.core.interfaces import ScoreBias
from plugformer.core.masks import masked_softmax
from plugformer.plugins.bra.routing import Geometry, routed_mask
from plugformer.plugins.bra.sparse import tiled_attention
from plugformer.plugins.bra.tiles import region_tiles, tile_indices, tile_mask, token_tiles


def masked_dense(q: Tensor, k: Tensor, v: Tensor, routes: Tensor, geometry: Geometry, *, scale: float,
                 key_valid: Optional[Tensor] = None, mask: Optional[Tensor] = None,
                 score_bias: Optional[ScoreBias] = None, dropout: float = 0.0) -> Tensor:
    """Every score q k^T, softmax under the routed mask.

    The calling convention of every path (this, :func:`tiled` and :func:`.flex.flex_bra`):
    q (B, H, Lq, Dh); k, v (B, Hkv, Lk, Dh) with ``H % Hkv == 0``; ``routes`` from
    :func:`.routing.route` and the ``geometry`` (lengths, region, routing kind, causality) of
    the call; ``scale`` multiplies q k^T; ``key_valid`` (B, Lk), True = real key; ``mask`` a
    general boolean mask (B, Hm, Lq, Lk) or None; ``score_bias(q_idx, k_idx) -> (H, *shape)`` a
    positional score bias; ``dropout`` the probability on the attention weights (0 = off).

    Returns:
        (B, H, Lq, Dh); half-precision inputs are computed in float32 and cast back.
    """
    allowed = routed_mask(routes, geometry, key_valid=key_valid, mask=mask)
    dtype = q.dtype
    if dtype in (torch.float16, torch.bfloat16):  # as the tiles: half inputs, float32 maths
        q, k, v = q.float(), k.float(), v.float()
    scores = q @ repeat_kv(k, q.shape[1]).transpose(-2, -1) * scale  # (B, H, Lq, Lk)
    if score_bias is not None:
        q_idx = torch.arange(geometry.lq, device=q.device)[:, None]
        k_idx = torch.arange(geometry.lk, device=q.device)[None, :]
        scores = scores + score_bias(q_idx, k_idx).to(scores.dtype)
    weights = masked_softmax(scores, allowed)
    if dropout:
        weights = F.dropout(weights, dropout)
    return (weights @ repeat_kv(v, q.shape[1])).to(dtype)


def gathered(q: Tensor, k: Tensor, v: Tensor, routes: Tensor, geometry: Geometry, *, scale: float,
             key_valid: Optional[Tensor] = None, mask: Optional[Tensor] = None,
             score_bias: Optional[ScoreBias] = None, dropout: float = 0.0) -> Tensor:
    """Token routing only: the keys of each query's S chosen regions, gathered per query
    (B, Hkv, Lq, S * R, Dh) by :func:`key_rows`, then softmax attention under the per-token rule;
    arguments and result as :func:`masked_dense`. Half precision is widened after the gather,
    not the whole cache. Memory grows as Lq * S * R, so it serves few queries: a cached decoding
    step, where it reads topk * region keys, not the cache."""
    g = geometry
    b, h, lq, dh = q.shape
    hkv = k.shape[1]
    width = routes.shape[-1] * g.region  # S * R keys per query
    regions = torch.where(routes < 0, g.nk, routes)  # an empty slot: a region past the last key
    k_idx = regions[..., None] * g.region + torch.arange(g.region, device=q.device)  # (B, Lq, S, R)
    blocked = (k_idx >= g.lk).flatten(2)  # (B, Lq, S*R)
    k_idx = k_idx.flatten(2).clamp_max(g.lk - 1)
    if key_valid is not None:
        blocked = blocked | ~key_valid.gather(1, k_idx.flatten(1)).view_as(blocked)
    q_idx = torch.arange(lq, device=q.device)[None, :, None] if lq > 1 or score_bias else 0  # (1, Lq, 1)
    if g.causal and lq > 1:  # a single query sits at the last key: it sees them all
        blocked = blocked | (k_idx > q_idx + (g.lk - g.lq))
    blocked = blocked[:, None, :, None, :]  # (B, 1, Lq, 1, S*R)
    if mask is not None:
        picked = mask.expand(b, -1, lq, -1).gather(3, k_idx[:, None].expand(b, mask.shape[1], lq, width))
        blocked = blocked | ~_by_group(picked, hkv)  # (B, Hkv or 1, Lq, G or 1, S*R)
    dtype = q.dtype
    keys, values = (_wide(x).view(b, hkv, lq, width, dh) for x in key_rows(k_idx, k, v))
    grouped = _wide(q).unflatten(1, (hkv, h // hkv)).transpose(2, 3)  # (B, Hkv, Lq, G, Dh)
    scores = grouped @ keys.transpose(-1, -2) * scale  # (B, Hkv, Lq, G, S*R)
    if score_bias is not None:
        scores = scores + _by_group(score_bias(q_idx, k_idx).to(scores.dtype).transpose(0, 1), hkv)
    if key_valid is None and mask is None:  # every row keeps a key: its own region's (causal) or a chosen one
        weights = scores.masked_fill(blocked, -math.inf).softmax(-1)
    else:
        weights = masked_softmax(scores, ~blocked)
    if dropout:
        weights = F.dropout(weights, dropout)
    out = (weights @ values).transpose(2, 3)  # (B, Hkv, G, Lq, Dh)
    return out.reshape(b, h, lq, dh).to(dtype)


def key_rows(index: Tensor, *tensors: Tensor) -> list[Tensor]:
    """Rows ``index`` (B, *) of each head of each of ``tensors`` (B, Hkv, L, Dh): (B, Hkv, N, Dh)
    each, N = index's elements per batch row.

    Keys held as a cache buffer, (B, Hkv, capacity, Dh) with rows of Dh contiguous, are read as
    one table of B * Hkv * capacity rows by ``index_select``, which copies whole rows (10x faster
    than ``gather``, which indexes every element, for 4 regions of 64 keys of 8 heads of 64 at
    8,192 cached keys, one thread); tensors of one layout (keys and values) share the row
    numbers. Other layouts (the packed projections) are gathered."""
    rows_of: dict[int, Tensor] = {}
    out = []
    for x in tensors:
        b, hkv, _, dh = x.shape
        if not _is_table(x):
            out.append(x.gather(2, index.reshape(b, 1, -1, 1).expand(b, hkv, -1, dh)))
            continue
        per_head = x.stride(1) // dh
        if per_head not in rows_of:
            heads = torch.arange(b * hkv, device=x.device).view(b, hkv, 1) * per_head
            rows_of[per_head] = (heads + index.reshape(b, 1, -1)).flatten()  # (B*Hkv*N,)
        table = x.as_strided((b * hkv * per_head, dh), (dh, 1))  # every row of every head
        out.append(table.index_select(0, rows_of[per_head]).view(b, hkv, -1, dh))
    return out


def _is_table(x: Tensor) -> bool:
    """Whether x (B, Hkv, L, Dh) lies in its storage as B * Hkv heads of equal room, rows of Dh
    contiguous (a cache buffer, whole or a view of its first L rows)."""
    b, hkv, _, dh = x.shape
    return (x.stride(3) == 1 and x.stride(2) == dh and x.stride(1) % dh == 0
            and x.stride(1) >= x.shape[2] * dh and x.stride(0) == hkv * x.stride(1)
            and x.untyped_storage().nbytes() >= (x.storage_offset() + b * x.stride(0)) * x.element_size())


def _by_group(x: Tensor, kv_heads: int) -> Tensor:
    """(B, Hx, Lq, W) with Hx = H or 1 -> (B, Hkv, Lq, G, W), or (B, 1, Lq, 1, W)."""
    if x.shape[1] == 1:
        return x[:, :, :, None, :]
    return x.unflatten(1, (kv_heads, -1)).transpose(2, 3)


def _wide(x: Tensor) -> Tensor:
    """Half precision computed in float32 (as the tiles)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def tiled(q: Tensor, k: Tensor, v: Tensor, routes: Tensor, geometry: Geometry, *, scale: float,
          key_valid: Optional[Tensor] = None, mask: Optional[Tensor] = None,
          score_bias: Optional[ScoreBias] = None, dropout: float = 0.0) -> Tensor:
    """Only the scores of the chosen regions, gathered into tiles; arguments and result as
    :func:`masked_dense`."""
    if geometry.token:
        tiles = token_tiles(routes, nk=geometry.nk, rows_per_tile=geometry.region)
    else:
        tiles = region_tiles(routes, lq=geometry.lq, nk=geometry.nk, region=geometry.region)
    allowed = tile_mask(tiles, geometry, key_valid=key_valid, mask=mask)
    cell_bias = None
    if score_bias is not None:
        q_idx, k_idx = tile_indices(tiles, geometry)
        cell_bias = score_bias(q_idx[:, :, None], k_idx[:, None, :])
        cell_bias = cell_bias.expand(q.shape[1], *tiles.rows.shape, k_idx.shape[1])  # (H, T, C, S*R)
    return tiled_attention(
        q, k, v, tiles, region=geometry.region, allowed=allowed, scale=scale, bias=cell_bias,
        dropout=dropout,
    )
