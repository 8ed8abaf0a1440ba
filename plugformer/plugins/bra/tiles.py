"""The work list of bi-level routing attention on CPU: tiles of queries and key regions.

A *tile* pairs C query rows with S key regions of R tokens. Region routing makes one tile per
query region (its R queries, its S chosen regions): every query lives in exactly one tile.
Token routing sorts the (query, chosen region) pairs by region and packs each region's queries
into tiles of C rows and that one region (S = 1): a query lives in as many tiles as it chose
regions, and its softmax spans all of them. :func:`tile_mask` says which cells of the tiles may
attend (empty slots, padding, causality, a general mask); :mod:`.sparse` does the attention.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from plugformer.plugins.bra.routing import Geometry


class Tiles(NamedTuple):
    """The tiles of one attention call.

    Attributes:
        rows: (T, C) long, flat query row b * Lq + i; 0 in an empty slot (then ``filled`` is False).
        filled: (T, C) bool, whether the slot holds a query.
        blocks: (T, S) long, flat key region b * nk + j; 0 in an empty slot.
        chosen: (T, S) bool, whether the slot holds a chosen region.
        batch: (T,) long, the batch row of the tile.
        shared_rows: whether a query row can appear in more than one tile.
    """

    rows: Tensor
    filled: Tensor
    blocks: Tensor
    chosen: Tensor
    batch: Tensor
    shared_rows: bool


def region_tiles(routes: Tensor, *, lq: int, nk: int, region: int) -> Tiles:
    """One tile per query region: routes (B, nq, S) from region routing."""
    b, nq, _ = routes.shape
    device = routes.device
    position = torch.arange(nq * region, device=device).view(1, nq, region)
    filled = (position < lq).expand(b, nq, region)
    batch = torch.arange(b, device=device)[:, None, None]
    rows = (batch * lq + position).masked_fill(~filled, 0)
    chosen = routes >= 0
    blocks = batch * nk + routes.clamp_min(0)
    return Tiles(
        rows=rows.reshape(b * nq, region),
        filled=filled.reshape(b * nq, region),
        blocks=blocks.reshape(b * nq, -1),
        chosen=chosen.reshape(b * nq, -1),
        batch=batch.expand(b, nq, 1).reshape(-1),
        shared_rows=False,
    )


def token_tiles(routes: Tensor, *, nk: int, rows_per_tile: int) -> Tiles:
    """Tiles of up to ``rows_per_tile`` queries that chose the same region: routes (B, Lq, S)."""
    b, lq, _ = routes.shape
    device = routes.device
    valid = routes >= 0
    batch = torch.arange(b, device=device)[:, None, None]
    query = torch.arange(lq, device=device)[None, :, None]
    group = (batch * nk + routes).expand_as(routes)[valid]  # (P,) flat key region of each pair
    row = (batch * lq + query).expand_as(routes)[valid]  # (P,) flat query row of each pair
    order = torch.argsort(group * (b * lq) + row)
    group, row = group[order], row[order]
    counts = torch.bincount(group, minlength=b * nk)
    tiles_per_group = (counts + rows_per_tile - 1) // rows_per_tile
    first_tile = torch.cumsum(tiles_per_group, 0) - tiles_per_group
    first_pair = torch.cumsum(counts, 0) - counts
    rank = torch.arange(group.numel(), device=device) - first_pair[group]
    tile = first_tile[group] + rank.div(rows_per_tile, rounding_mode="floor")
    slot = rank % rows_per_tile
    n_tiles = int(tiles_per_group.sum())
    rows = torch.zeros(n_tiles, rows_per_tile, dtype=torch.long, device=device)
    filled = torch.zeros(n_tiles, rows_per_tile, dtype=torch.bool, device=device)
    rows[tile, slot] = row
    filled[tile, slot] = True
    blocks = torch.repeat_interleave(torch.arange(b * nk, device=device), tiles_per_group)
    return Tiles(
        rows=rows,
        filled=filled,
        blocks=blocks[:, None],
        chosen=torch.ones(n_tiles, 1, dtype=torch.bool, device=device),
        batch=blocks.div(nk, rounding_mode="floor"),
        shared_rows=True,
    )


def tile_indices(tiles: Tiles, geometry: Geometry) -> tuple[Tensor, Tensor]:
    """Local query index (T, C) and key index (T, S * R) of every tile cell, clamped into range."""
    g = geometry
    q_idx = (tiles.rows - tiles.batch[:, None] * g.lq).clamp(0, g.lq - 1)
    local_block = tiles.blocks - tiles.batch[:, None] * g.nk  # (T, S)
    k_idx = local_block[:, :, None] * g.region + torch.arange(g.region, device=q_idx.device)
    return q_idx, k_idx.flatten(1).clamp_max(g.lk - 1)


def tile_mask(
    tiles: Tiles, geometry: Geometry, *, key_valid: Optional[Tensor] = None, mask: Optional[Tensor] = None
) -> Optional[Tensor]:
    """Which tile cells may attend: (T, C, S * R) bool, (H, T, C, S * R) for a per-head ``mask``,
    or None when every cell may.

    Empty slots, the padded tail, keys ``key_valid`` (B, Lk) marks padding, the bottom-right
    causal mask of ``geometry`` and a general boolean ``mask`` (4-d, broadcastable to
    (B, H, Lq, Lk)) all apply.
    """
    lq, lk, nk, region = geometry.lq, geometry.lk, geometry.nk, geometry.region
    if not geometry.causal and key_valid is None and mask is None and lq % region == 0 and lk % region == 0:
        if bool(tiles.chosen.all()) and bool(tiles.filled.all()):
            return None
    device = tiles.rows.device
    local_block = tiles.blocks - tiles.batch[:, None] * nk
    k_pos = (local_block[:, :, None] * region + torch.arange(region, device=device)).flatten(1)
    key_ok = (k_pos < lk) & tiles.chosen.repeat_interleave(region, dim=1)  # (T, S*R)
    if key_valid is not None:
        padded = F.pad(key_valid, (0, nk * region - lk), value=False)
        key_ok = key_ok & padded[tiles.batch[:, None], k_pos]
    allowed = tiles.filled[:, :, None] & key_ok[:, None, :]  # (T, C, S*R)
    q_idx, k_idx = tile_indices(tiles, geometry)
    if geometry.causal:
        allowed = allowed & (k_pos[:, None, :] <= q_idx[:, :, None] + (lk - lq))
    if mask is not None:
        b_idx = tiles.batch if mask.shape[0] > 1 else torch.zeros_like(tiles.batch)
        i_idx = q_idx if mask.shape[2] > 1 else torch.zeros_like(q_idx)
        picked = mask[b_idx[:, None, None], :, i_idx[:, :, None], k_idx[:, None, :]]  # (T, C, SR, Hm)
        picked = picked.permute(3, 0, 1, 2)  # (Hm, T, C, S*R)
        allowed = allowed & (picked[0] if picked.shape[0] == 1 else picked)
    return None if bool(allowed.all()) else allowed
