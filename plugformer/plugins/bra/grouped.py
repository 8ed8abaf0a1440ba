"""Causal token-routed bi-level routing attention, grouped by key region (MoBA's layout).

Lu et al., "MoBA: Mixture of Block Attention for Long-Context LLMs" (2025), the causal form of
BiFormer's bi-level routing attention (Zhu et al., CVPR 2023). Every query attends the tokens of
the regions its routing chose: its own region under a token-level causal mask (the diagonal
block, computed for all queries at once as a batch of causal R x R blocks) and up to
``topk - 1`` earlier regions (fully visible). As in MoBA's ``moba_efficient.py``, the (query,
earlier region) pairs are sorted by region and each region's queries are packed into tiles of
``rows`` queries, so one batched attention call attends a key region to exactly the queries that
chose it: the work is about L * topk * R scores per head whatever the routing, not the union of
what a tile of neighbouring queries chose. A query's partial results (one per block) merge
through their log-sum-exp, online over groups of tiles (a running maximum per query, scattered
with ``index_add_``).

Two paths compute the blocks. Without a mask (no key padding, every query chose its own region:
what causal token routing gives) PyTorch's fused CPU flash-attention kernel does the diagonal
and the tiles, forward and backward (:mod:`.grouped_fused`, whose custom operators tell
``FlopCounterMode`` the FLOPs the routing asks for). Otherwise :mod:`.grouped_masked` does it
with batched matmuls and a flash-style backward.
Neither keeps an (L x L) or a (pairs x R) tensor; the tiles are processed in groups of
``tile_budget`` scores. Half and bfloat16 inputs compute in float32.

Checked against dense softmax attention under the boolean mask the routing implies, and exact
causal attention when ``topk`` covers every region (``tests/plugins/bra/test_grouped.py``);
speed against fused causal attention in ``benchmarks/bra_causal_grouped.py``.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from plugformer.plugins.bra.grouped_fused import FLASH, fused_grouped_attention
from plugformer.plugins.bra.grouped_masked import masked_grouped_attention

#: Scores per tile group (query rows x region keys x heads) computed at once. Bounds the memory
#: the tiles take beside q, k, v (2**20 float32 scores = 4 MiB per temporary, which stays in
#: cache: 9% faster than 2**22 at N = 16,384 on one thread, benchmarks/bra_causal_grouped.py).
DEFAULT_TILE_BUDGET = 2**20


class GroupedPlan(NamedTuple):
    """The work list of one call, built from the routing (no gradient).

    A region's queries fill tiles of ``rows`` queries, and what is left (fewer than ``rows``)
    tiles of ``rows // 4``: with causal routing the regions are chosen very unevenly (early ones by
    most later queries), and single-width tiles of 128 left 28% of the slots empty at 8,192 tokens
    (region 64, topk 4, random routing); the narrow tiles cut that to 8%.

    Attributes:
        rows: (sum of W_i * C_i,) long, flat query row b * Lp + i of each tile slot, the wide
            tiles first; ``null`` in an empty slot.
        blocks: (W,) long, flat key region b * n + j of each tile, in the same order.
        widths: (W_0, C_0, W_1, C_1, ...): consecutive runs of W_i tiles of C_i slots.
        own: (B * Lp,) bool, whether each query chose its own region, or None when all did.
        null: index of the zero row that empty slots point to (= B * Lp).
        pairs: filled slots, the (query, earlier region) pairs attended.
    """

    rows: Tensor
    blocks: Tensor
    widths: tuple[int, ...]
    own: Optional[Tensor]
    null: int
    pairs: int


def grouped_plan(chosen: Tensor, *, length: int, region: int, rows: int) -> GroupedPlan:
    """Sort the (query, earlier chosen region) pairs by region and pack them into tiles.

    Args:
        chosen: (B, L, S) long region indices per query, -1 = empty slot, as causal token routing
            returns them (slot 0 the own region). Regions after the query's own hold only future
            keys and are dropped; a region chosen twice counts once.
        length: L.
        region: tokens per region R.
        rows: queries per wide tile C; the rest of a region's queries go to tiles of
            ``max(1, rows // 4)``.

    Returns:
        the :class:`GroupedPlan`.

    Raises:
        ValueError: ``chosen`` holds an index outside [-1, ceil(L / R)).
    """
    b, lq, _ = chosen.shape
    n = math.ceil(length / region)
    padded = n * region
    device = chosen.device
    if chosen.numel() and (int(chosen.min()) < -1 or int(chosen.max()) >= n):
        raise ValueError(
            f"chosen must hold region indices in [-1, {n}) for length {length} and region {region}; "
            f"got values in [{int(chosen.min())}, {int(chosen.max())}]"
        )
    own_region = (torch.arange(lq, device=device) // region)[None, :, None]  # (1, L, 1)
    own = (chosen == own_region).any(-1)  # (B, L)
    earlier = chosen.masked_fill((chosen < 0) | (chosen >= own_region), n).sort(-1).values
    repeated = F.pad(earlier[..., 1:] == earlier[..., :-1], (1, 0))
    batch, query, slot = ((earlier < n) & ~repeated).nonzero(as_tuple=True)
    pair_rows = batch * padded + query
    pair_blocks = batch * n + earlier[batch, query, slot]
    order = torch.argsort(pair_blocks, stable=True)
    pair_rows, pair_blocks = pair_rows[order], pair_blocks[order]

    narrow = max(1, rows // 4)
    counts = torch.bincount(pair_blocks, minlength=b * n)  # (B * n,)
    wide_tiles = counts // rows
    narrow_tiles = (counts - wide_tiles * rows + narrow - 1) // narrow
    first_pair = torch.cumsum(counts, 0) - counts
    first_wide = torch.cumsum(wide_tiles, 0) - wide_tiles
    first_narrow = torch.cumsum(narrow_tiles, 0) - narrow_tiles
    wide_slots = int(wide_tiles.sum()) * rows
    rank = torch.arange(pair_rows.numel(), device=device) - first_pair[pair_blocks]
    in_wide = wide_tiles[pair_blocks] * rows  # pairs of the region that the wide tiles take
    rest = rank - in_wide
    slot_of_pair = torch.where(
        rank < in_wide,
        (first_wide[pair_blocks] + rank // rows) * rows + rank % rows,
        wide_slots + (first_narrow[pair_blocks] + rest // narrow) * narrow + rest % narrow,
    )
    null = b * padded
    tile_rows = torch.full((wide_slots + int(narrow_tiles.sum()) * narrow,), null, dtype=torch.long, device=device)
    tile_rows[slot_of_pair] = pair_rows
    regions = torch.arange(b * n, device=device)
    blocks = torch.cat([torch.repeat_interleave(regions, wide_tiles), torch.repeat_interleave(regions, narrow_tiles)])
    widths = (int(wide_tiles.sum()), rows, int(narrow_tiles.sum()), narrow)
    own_flat = None if bool(own.all()) else F.pad(own, (0, padded - lq)).reshape(-1)
    return GroupedPlan(rows=tile_rows, blocks=blocks, widths=widths, own=own_flat, null=null,
                       pairs=pair_rows.numel())


def grouped_causal_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    chosen: Tensor,
    *,
    region: int,
    scale: Optional[float] = None,
    key_valid: Optional[Tensor] = None,
    rows: int = 128,
    tile_budget: int = DEFAULT_TILE_BUDGET,
    fused: bool = True,
) -> Tensor:
    """Exact causal softmax attention of each query over the tokens of its chosen regions.

    Query i sits at position i (training / prefill: Lq = Lk) and sees key j when j's region is
    among ``chosen[b, i]``, j <= i and ``key_valid[b, j]``. Autograd flows to q, k and v.

    Args:
        q: (B, H, L, D) queries.
        k: (B, Hkv, L, D) keys, H a multiple of Hkv (grouped-query attention).
        v: (B, Hkv, L, D) values.
        chosen: (B, L, S) long, the regions each query attends, -1 = empty slot (the output of
            ``bra_routing.route(..., causal=True, routing="token")``, one routing for all heads).
        region: tokens per region R (the last region may be partial).
        scale: score scale. Default: 1 / sqrt(D).
        key_valid: (B, L) bool, True = a real key; padded keys never get weight, and a query
            with no visible key gets zeros. Default: None (all real).
        rows: queries per tile. Default: 128 (7% faster than 64 at N = 8,192, region 64, topk 4,
            ``benchmarks/bra_causal_grouped.py --rows``).
        tile_budget: scores computed at once, bounding the tiles' memory. Default: 2**20.
        fused: attend the blocks with PyTorch's fused CPU flash-attention kernel
            (``aten._scaled_dot_product_flash_attention_for_cpu``, forward and backward) when no
            mask is needed (no ``key_valid``, every query chose its own region); otherwise, or
            with False, plain batched matmuls (:mod:`.grouped_masked`). Default: True.

    Returns:
        (B, H, L, D) in q's dtype.

    Raises:
        ValueError: mismatched shapes, H not a multiple of Hkv, a bad ``chosen``, or
            ``region``/``rows``/``tile_budget`` < 1.
    """
    b, h, length, d = q.shape
    _check(q, k, v, chosen, key_valid, region=region, rows=rows, tile_budget=tile_budget)
    plan = grouped_plan(chosen, length=length, region=region, rows=rows)
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    if fused and key_valid is None and plan.own is None and FLASH is not None and q.device.type == "cpu":
        return fused_grouped_attention(q, k, v, plan.rows, plan.blocks, plan.widths, region=region, scale=scale,
                                       budget=tile_budget, pairs=plan.pairs)
    return masked_grouped_attention(q, k, v, rows=plan.rows, blocks=plan.blocks, widths=plan.widths, own=plan.own,
                                    key_valid=key_valid, region=region, scale=scale, budget=tile_budget)


def _check(q, k, v, chosen, key_valid, *, region, rows, tile_budget) -> None:
    for name, value in (("region", region), ("rows", rows), ("tile_budget", tile_budget)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1; got {value}")
    if q.dim() != 4 or k.shape != v.shape or k.dim() != 4:
        raise ValueError(
            f"q must be (B, H, L, D) and k, v (B, Hkv, L, D); got {tuple(q.shape)}, "
            f"{tuple(k.shape)}, {tuple(v.shape)}"
        )
    b, h, length, d = q.shape
    if k.shape[0] != b or k.shape[2] != length or k.shape[3] != d or h % k.shape[1]:
        raise ValueError(
            f"k and v must be (B={b}, Hkv, L={length}, D={d}) with H={h} a multiple of Hkv; "
            f"got {tuple(k.shape)}"
        )
    if chosen.dim() != 3 or chosen.shape[:2] != (b, length) or chosen.dtype != torch.long:
        raise ValueError(f"chosen must be a (B={b}, L={length}, S) long tensor; got "
                         f"{tuple(chosen.shape)} {chosen.dtype}")
    if key_valid is not None and (key_valid.shape != (b, length) or key_valid.dtype != torch.bool):
        raise ValueError(f"key_valid must be a (B={b}, L={length}) bool tensor; got "
                         f"{tuple(key_valid.shape)} {key_valid.dtype}")
