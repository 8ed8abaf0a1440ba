"""Causal token-routed bi-level routing attention, grouped by key region (MoBA's layout).

Lu et al., "MoBA: Mixture of Block Attention for Long-Context LLMs" (2025), the causal form of
BiFormer's bi-level routing attention (Zhu et al., CVPR 2023). Every query attends the tokens of
the regions its routing chose: its own region under a token-level causal mask (the diagonal
block, computed for all queries at once as a batch of R x R blocks) and up to ``topk - 1``
earlier regions (fully visible). The (query, earlier region) pairs are sorted by region and each
region's queries are packed into tiles of ``rows`` queries, so one batched matmul attends a key
region to exactly the queries that chose it; the work is L * topk * R scores per head, whatever
the routing, instead of the union over a tile of queries. The partial softmaxes of a query merge
online through a running maximum (flash attention's rescaling, scattered with ``index_add_``).

The backward pass is flash attention's: it keeps q, k, v, the output and the log-sum-exp of each
query, and recomputes the scores tile by tile, so no (L x L) and no (pairs x R) tensor outlives a
tile group. Half and bfloat16 inputs compute in float32.

Checked against dense softmax attention under the boolean mask the routing implies
(``tests/plugins/test_bra_grouped.py``), and equal to exact causal attention when ``topk``
covers every region.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

#: Scores per tile group (query rows x region keys x heads) computed at once; bounds the memory
#: the tiles take beside q, k, v (2**22 float32 scores = 16 MiB per temporary).
DEFAULT_TILE_BUDGET = 2**22


class GroupedPlan(NamedTuple):
    """The work list of one call, built from the routing (no gradient).

    Attributes:
        rows: (W * C,) long, flat query row b * Lp + i of each tile slot; ``null`` in an empty slot.
        blocks: (W,) long, flat key region b * n + j of each tile.
        own: (B * Lp,) bool, whether each query chose its own region, or None when all did.
        null: index of the zero row that empty slots point to (= B * Lp).
    """

    rows: Tensor
    blocks: Tensor
    own: Optional[Tensor]
    null: int


def grouped_plan(chosen: Tensor, *, length: int, region: int, rows: int) -> GroupedPlan:
    """Sort the (query, earlier chosen region) pairs by region and pack them into tiles.

    Args:
        chosen: (B, L, S) long region indices per query, -1 = empty slot, as causal token routing
            returns them (slot 0 the own region). Regions after the query's own hold only future
            keys and are dropped; a region chosen twice counts once.
        length: L.
        region: tokens per region R.
        rows: queries per tile C.

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

    counts = torch.bincount(pair_blocks, minlength=b * n)  # (B * n,)
    tiles = (counts + rows - 1) // rows
    first_pair = torch.cumsum(counts, 0) - counts
    first_tile = torch.cumsum(tiles, 0) - tiles
    rank = torch.arange(pair_rows.numel(), device=device) - first_pair[pair_blocks]
    slot_of_pair = (first_tile[pair_blocks] + rank // rows) * rows + rank % rows
    null = b * padded
    tile_rows = torch.full((int(tiles.sum()) * rows,), null, dtype=torch.long, device=device)
    tile_rows[slot_of_pair] = pair_rows
    blocks = torch.repeat_interleave(torch.arange(b * n, device=device), tiles)
    own_flat = None if bool(own.all()) else F.pad(own, (0, padded - lq)).reshape(-1)
    return GroupedPlan(rows=tile_rows, blocks=blocks, own=own_flat, null=null)


def grouped_causal_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    chosen: Tensor,
    *,
    region: int,
    scale: Optional[float] = None,
    key_valid: Optional[Tensor] = None,
    rows: int = 64,
    tile_budget: int = DEFAULT_TILE_BUDGET,
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
        rows: queries per tile. Default: 64 (fastest on 2 CPU cores, ``benchmarks/bra_causal_grouped.py``).
        tile_budget: scores computed at once, bounding the tiles' memory. Default: 2**22.

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
    return _GroupedAttention.apply(q, k, v, key_valid, plan, region, scale, tile_budget)


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


class _Layout(NamedTuple):
    """Shapes of one call: rows are flat b * Lp + i, regions flat b * n + j."""

    b: int
    h: int
    hkv: int
    length: int
    n: int
    region: int

    @property
    def groups(self) -> int:
        return self.h // self.hkv

    @property
    def padded(self) -> int:
        return self.n * self.region


def _rows_of(x: Tensor, lay: _Layout, dtype: torch.dtype) -> Tensor:
    """(B, H, L, D) -> (Hkv, B * Lp + 1, G, D): query rows by key/value head, a zero row last."""
    x = F.pad(x.to(dtype), (0, 0, 0, lay.padded - lay.length))
    x = x.reshape(lay.b, lay.hkv, lay.groups, lay.padded, -1).permute(1, 0, 3, 2, 4)
    x = x.reshape(lay.hkv, lay.b * lay.padded, lay.groups, -1)
    return F.pad(x, (0, 0, 0, 0, 0, 1))


def _unrows(x: Tensor, lay: _Layout) -> Tensor:
    """(Hkv, B * Lp + 1, G, D) -> (B, H, L, D)."""
    x = x[:, :-1].view(lay.hkv, lay.b, lay.padded, lay.groups, -1).permute(1, 0, 3, 2, 4)
    return x.reshape(lay.b, lay.h, lay.padded, -1)[:, :, : lay.length]


def _blocks_of(x: Tensor, lay: _Layout, dtype: torch.dtype) -> Tensor:
    """(B, Hkv, L, D) -> (Hkv, B * n, R, D): key regions."""
    x = F.pad(x.to(dtype), (0, 0, 0, lay.padded - lay.length))
    return x.reshape(lay.b, lay.hkv, lay.n, lay.region, -1).transpose(0, 1).reshape(lay.hkv, lay.b * lay.n, lay.region, -1)


def _unblocks(x: Tensor, lay: _Layout) -> Tensor:
    """(Hkv, B * n, R, D) -> (B, Hkv, L, D)."""
    x = x.view(lay.hkv, lay.b, lay.padded, -1).transpose(0, 1)
    return x[:, :, : lay.length]


def _diagonal_mask(lay: _Layout, key_valid: Optional[Tensor], own: Optional[Tensor], device) -> Tensor:
    """(1 or B * n, R * G, R) bool, True = may attend: causal inside the own region, real keys only."""
    causal = torch.ones(lay.region, lay.region, dtype=torch.bool, device=device).tril()
    mask = causal.repeat_interleave(lay.groups, dim=0)[None]  # (1, R * G, R)
    if key_valid is not None or lay.padded != lay.length:
        real = torch.zeros(lay.b, lay.padded, dtype=torch.bool, device=device)
        real[:, : lay.length] = True if key_valid is None else key_valid
        mask = mask & real.view(lay.b * lay.n, 1, lay.region)
    if own is not None:
        mask = mask & own.view(lay.b * lay.n, lay.region, 1).repeat_interleave(lay.groups, dim=1)
    return mask


def _tile_groups(rows: Tensor, blocks: Tensor, lay: _Layout, budget: int):
    """Consecutive runs of tiles whose scores fit ``budget``: (rows (w * C,), blocks (w,))."""
    width = rows.numel() // max(1, blocks.numel())  # C
    step = max(1, budget // (width * lay.h * lay.region))
    for start in range(0, blocks.numel(), step):
        yield rows[start * width: (start + step) * width], blocks[start: start + step]


def _finite(x: Tensor) -> Tensor:
    return x.masked_fill(x == -math.inf, 0.0)


class _GroupedAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, key_valid, plan, region, scale, budget):
        dtype = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
        b, h, length, d = q.shape
        lay = _Layout(b, h, k.shape[1], length, math.ceil(length / region), region)
        qs = _rows_of(q, lay, dtype) * scale  # (Hkv, B * Lp + 1, G, D)
        kb, vb = _blocks_of(k, lay, dtype), _blocks_of(v, lay, dtype)  # (Hkv, B * n, R, D)
        diagonal = _diagonal_mask(lay, key_valid, plan.own, q.device)
        key_real = None if key_valid is None else F.pad(key_valid, (0, lay.padded - length)).view(-1, region)

        scores = qs[:, :-1].reshape(lay.hkv, b * lay.n, region * lay.groups, d) @ kb.transpose(-1, -2)
        scores.masked_fill_(~diagonal, -math.inf)  # (Hkv, B * n, R * G, R)
        top = scores.amax(-1, keepdim=True)
        p = scores.sub_(_finite(top)).exp_()
        acc = F.pad((p @ vb).view(lay.hkv, b * lay.padded, lay.groups, d), (0, 0, 0, 0, 0, 1))
        total = F.pad(p.sum(-1).view(lay.hkv, b * lay.padded, lay.groups), (0, 0, 0, 1))
        top = F.pad(top.view(lay.hkv, b * lay.padded, lay.groups), (0, 0, 0, 1), value=-math.inf)
        del scores, p

        for rows, blocks in _tile_groups(plan.rows, plan.blocks, lay, budget):
            w = blocks.numel()
            q_tiles = qs.index_select(1, rows).view(lay.hkv, w, -1, d)  # (Hkv, w, C * G, D)
            scores = q_tiles @ kb.index_select(1, blocks).transpose(-1, -2)  # (Hkv, w, C * G, R)
            if key_real is not None:
                scores.masked_fill_(~key_real[blocks][None, :, None, :], -math.inf)
            row_top = scores.amax(-1).view(lay.hkv, -1, lay.groups)
            new_top = top.scatter_reduce(1, rows.view(1, -1, 1).expand_as(row_top), row_top, "amax")
            safe_top = _finite(new_top)
            rescale = torch.exp(top - safe_top)
            acc.mul_(rescale[..., None])
            total.mul_(rescale)
            p = scores.sub_(safe_top.index_select(1, rows).view(lay.hkv, w, -1, 1)).exp_()
            total.index_add_(1, rows, p.sum(-1).view(lay.hkv, -1, lay.groups))
            acc.index_add_(1, rows, (p @ vb.index_select(1, blocks)).view(lay.hkv, -1, lay.groups, d))
            top = new_top

        out = acc / total.clamp_min(torch.finfo(dtype).tiny)[..., None]  # (Hkv, B * Lp + 1, G, D)
        lse = top + torch.log(total)  # -inf where a query sees no key
        out[:, -1] = 0.0
        lse[:, -1] = 0.0
        ctx.save_for_backward(qs, kb, vb, out, lse, diagonal, key_real, plan.rows, plan.blocks)
        ctx.lay, ctx.scale, ctx.budget, ctx.dtypes = lay, scale, budget, (q.dtype, k.dtype, v.dtype)
        return _unrows(out, lay).to(q.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        qs, kb, vb, out, lse, diagonal, key_real, plan_rows, plan_blocks = ctx.saved_tensors
        lay, scale = ctx.lay, ctx.scale
        hkv, g, d, region = lay.hkv, lay.groups, qs.shape[-1], lay.region
        go = _rows_of(grad_out, lay, qs.dtype)  # (Hkv, B * Lp + 1, G, D), zero in padded rows
        delta = (go * out).sum(-1)  # (Hkv, B * Lp + 1, G)
        lse = _finite(lse)

        q_diag = qs[:, :-1].reshape(hkv, -1, region * g, d)  # (Hkv, B * n, R * G, D)
        go_diag = go[:, :-1].reshape(hkv, -1, region * g, d)
        scores = (q_diag @ kb.transpose(-1, -2)).masked_fill_(~diagonal, -math.inf)
        p = scores.sub_(lse[:, :-1].reshape(hkv, -1, region * g, 1)).exp_()
        dv = p.transpose(-1, -2) @ go_diag  # (Hkv, B * n, R, D)
        ds = (go_diag @ vb.transpose(-1, -2)).sub_(delta[:, :-1].reshape(hkv, -1, region * g, 1)).mul_(p)
        dq = F.pad((ds @ kb).view(hkv, -1, g, d), (0, 0, 0, 0, 0, 1))
        dk = ds.transpose(-1, -2) @ q_diag
        del scores, p, ds

        for rows, blocks in _tile_groups(plan_rows, plan_blocks, lay, ctx.budget):
            w = blocks.numel()
            q_tiles = qs.index_select(1, rows).view(hkv, w, -1, d)  # (Hkv, w, C * G, D)
            go_tiles = go.index_select(1, rows).view(hkv, w, -1, d)
            k_tiles, v_tiles = kb.index_select(1, blocks), vb.index_select(1, blocks)  # (Hkv, w, R, D)
            scores = q_tiles @ k_tiles.transpose(-1, -2)
            if key_real is not None:
                scores.masked_fill_(~key_real[blocks][None, :, None, :], -math.inf)
            p = scores.sub_(lse.index_select(1, rows).view(hkv, w, -1, 1)).exp_()
            dv.index_add_(1, blocks, p.transpose(-1, -2) @ go_tiles)
            ds = (go_tiles @ v_tiles.transpose(-1, -2)).sub_(delta.index_select(1, rows).view(hkv, w, -1, 1)).mul_(p)
            dq.index_add_(1, rows, (ds @ k_tiles).view(hkv, -1, g, d))
            dk.index_add_(1, blocks, ds.transpose(-1, -2) @ q_tiles)

        dtype_q, dtype_k, dtype_v = ctx.dtypes
        grad_q = (_unrows(dq, lay) * scale).to(dtype_q)
        return grad_q, _unblocks(dk, lay).to(dtype_k), _unblocks(dv, lay).to(dtype_v), None, None, None, None, None
