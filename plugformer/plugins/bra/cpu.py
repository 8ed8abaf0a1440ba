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
    (B, Hkv, Lq, S * R, Dh), then softmax attention under the per-token rule; arguments and
    result as :func:`masked_dense`. Memory grows as Lq * S * R, so it serves few queries."""
    g = geometry
    b, h, lq, dh = q.shape
    hkv = k.shape[1]
    width = routes.shape[-1] * g.region  # S * R keys per query
    k_idx = routes.clamp_min(0)[..., None] * g.region + torch.arange(g.region, device=q.device)  # (B, Lq, S, R)
    allowed = ((routes >= 0)[..., None] & (k_idx < g.lk)).flatten(2)  # (B, Lq, S*R)
    k_idx = k_idx.flatten(2).clamp_max(g.lk - 1)
    if key_valid is not None:
        allowed = allowed & key_valid.gather(1, k_idx.flatten(1)).view_as(allowed)
    q_idx = torch.arange(lq, device=q.device)[None, :, None]  # (1, Lq, 1)
    if g.causal:
        allowed = allowed & (k_idx <= q_idx + (g.lk - g.lq))
    allowed = allowed[:, None]  # (B, 1, Lq, S*R)
    if mask is not None:
        picked = mask.expand(b, -1, lq, -1).gather(3, k_idx[:, None].expand(b, mask.shape[1], lq, width))
        allowed = allowed & picked  # (B, Hm, Lq, S*R)
    dtype = q.dtype
    if dtype in (torch.float16, torch.bfloat16):
        q, k, v = q.float(), k.float(), v.float()
    index = k_idx.view(b, 1, lq * width, 1).expand(b, hkv, lq * width, dh)
    keys = k.gather(2, index).view(b, hkv, lq, width, dh)
    values = v.gather(2, index).view(b, hkv, lq, width, dh)
    grouped = q.reshape(b, hkv, h // hkv, lq, dh)  # (B, Hkv, G, Lq, Dh)
    scores = torch.einsum("bkgld,bklsd->bkgls", grouped, keys).reshape(b, h, lq, width) * scale
    if score_bias is not None:
        scores = scores + score_bias(q_idx, k_idx).to(scores.dtype).transpose(0, 1)  # (B, H, Lq, S*R)
    weights = masked_softmax(scores, allowed)
    if dropout:
        weights = F.dropout(weights, dropout)
    out = torch.einsum("bkgls,bklsd->bkgld", weights.view(b, hkv, h // hkv, lq, width), values)
    return out.reshape(b, h, lq, dh).to(dtype)


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
