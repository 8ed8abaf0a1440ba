"""The plain-matmul path of :mod:`.grouped`: any key mask, any routing, flash-style backward.

The (query, region) tiles of :func:`.grouped.grouped_plan` are attended with batched matmuls
(scores masked where a key is padding or, in the diagonal block, in the future or in a region
the query did not choose), merged online through a running maximum, and the backward pass
recomputes the scores tile by tile from the saved log-sum-exp (flash attention's backward), so
no (L x L) and no (pairs x R) tensor outlives a tile group. Half and bfloat16 compute in float32.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def masked_grouped_attention(
    q: Tensor, k: Tensor, v: Tensor, *, rows: Tensor, blocks: Tensor, widths: Sequence[int], own: Optional[Tensor],
    key_valid: Optional[Tensor], region: int, scale: float, budget: int,
) -> Tensor:
    """Grouped causal attention with plain matmuls; arguments as in :mod:`.grouped`.

    Args:
        q: (B, H, L, D); k, v: (B, Hkv, L, D).
        rows, blocks, widths, own: the fields of a ``GroupedPlan``.
        key_valid: (B, L) bool, True = real key, or None.

    Returns:
        (B, H, L, D) in q's dtype; zeros for a query that sees no key.
    """
    return _GroupedAttention.apply(q, k, v, key_valid, rows, blocks, tuple(widths), own, region, scale, budget)


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


def _pad_length(x: Tensor, lay: _Layout) -> Tensor:
    """(..., L, D) -> (..., Lp, D), zeros after L; no copy when L = Lp."""
    return x if lay.padded == lay.length else F.pad(x, (0, 0, 0, lay.padded - lay.length))


def _rows_of(x: Tensor, lay: _Layout, dtype: torch.dtype) -> Tensor:
    """(B, H, L, D) -> (Hkv, B * Lp + 1, G, D): query rows by key/value head, a zero row last."""
    x = _pad_length(x.to(dtype), lay)
    x = x.reshape(lay.b, lay.hkv, lay.groups, lay.padded, -1).permute(1, 0, 3, 2, 4)
    x = x.reshape(lay.hkv, lay.b * lay.padded, lay.groups, -1)
    return F.pad(x, (0, 0, 0, 0, 0, 1))


def _unrows(x: Tensor, lay: _Layout) -> Tensor:
    """(Hkv, B * Lp + 1, G, D) -> (B, H, L, D)."""
    x = x[:, :-1].view(lay.hkv, lay.b, lay.padded, lay.groups, -1).permute(1, 0, 3, 2, 4)
    return x.reshape(lay.b, lay.h, lay.padded, -1)[:, :, : lay.length]


def _blocks_of(x: Tensor, lay: _Layout, dtype: torch.dtype) -> Tensor:
    """(B, Hkv, L, D) -> (Hkv, B * n, R, D): key regions."""
    x = _pad_length(x.to(dtype), lay).reshape(lay.b, lay.hkv, lay.n, lay.region, -1)
    return x.transpose(0, 1).reshape(lay.hkv, lay.b * lay.n, lay.region, -1)


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


def tile_groups(rows: Tensor, blocks: Tensor, widths: Sequence[int], *, heads: int, region: int, budget: int):
    """Consecutive runs of tiles of one width whose scores (rows x region x heads, rows counted as
    at least ``region``) fit ``budget``.

    Args:
        rows: (sum of W_i * C_i,) long, the query row of each tile slot; blocks: (W,) long, each
            tile's region; widths: flat [W_0, C_0, W_1, C_1, ...], runs of W_i tiles of C_i slots
            (a :class:`.grouped.GroupedPlan`'s ``widths``).

    Yields:
        (rows (w * C_i,), blocks (w,)) per group, in slot order.
    """
    slot = tile = 0
    for count, width in zip(widths[::2], widths[1::2]):
        # a tile's gathered keys and values weigh like a region's worth of query rows
        step = max(1, budget // (max(width, region) * heads * region))
        for start in range(0, count, step):
            end = min(start + step, count)
            yield rows[slot + start * width: slot + end * width], blocks[tile + start: tile + end]
        slot, tile = slot + count * width, tile + count


def _finite(x: Tensor) -> Tensor:
    return x.masked_fill(x == -math.inf, 0.0)


class _GroupedAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, key_valid, rows_, blocks_, widths, own, region, scale, budget):
        dtype = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
        b, h, length, d = q.shape
        lay = _Layout(b, h, k.shape[1], length, math.ceil(length / region), region)
        qs = _rows_of(q, lay, dtype) * scale  # (Hkv, B * Lp + 1, G, D)
        kb, vb = _blocks_of(k, lay, dtype), _blocks_of(v, lay, dtype)  # (Hkv, B * n, R, D)
        diagonal = _diagonal_mask(lay, key_valid, own, q.device)
        key_real = None if key_valid is None else F.pad(key_valid, (0, lay.padded - length)).view(-1, region)

        scores = qs[:, :-1].reshape(lay.hkv, b * lay.n, region * lay.groups, d) @ kb.transpose(-1, -2)
        scores.masked_fill_(~diagonal, -math.inf)  # (Hkv, B * n, R * G, R)
        top = scores.amax(-1, keepdim=True)
        p = scores.sub_(_finite(top)).exp_()
        acc = F.pad((p @ vb).view(lay.hkv, b * lay.padded, lay.groups, d), (0, 0, 0, 0, 0, 1))
        total = F.pad(p.sum(-1).view(lay.hkv, b * lay.padded, lay.groups), (0, 0, 0, 1))
        top = F.pad(top.view(lay.hkv, b * lay.padded, lay.groups), (0, 0, 0, 1), value=-math.inf)
        del scores, p

        for rows, blocks in tile_groups(rows_, blocks_, widths, heads=lay.h, region=region, budget=budget):
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
        ctx.save_for_backward(qs, kb, vb, out, lse, diagonal, key_real, rows_, blocks_)
        ctx.lay, ctx.scale, ctx.budget, ctx.dtypes = lay, scale, budget, (q.dtype, k.dtype, v.dtype)
        ctx.widths = widths
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

        groups = tile_groups(plan_rows, plan_blocks, ctx.widths, heads=lay.h, region=region, budget=ctx.budget)
        for rows, blocks in groups:
            w = blocks.numel()
            q_tiles = qs.index_select(1, rows).view(hkv, w, -1, d)  # (Hkv, w, C * G, D)
            go_tiles = go.index_select(1, rows).view(hkv, w, -1, d)
            k_tiles, v_tiles = kb.index_select(1, blocks), vb.index_select(1, blocks)  # (Hkv, w, R, D)
            scores = q_tiles @ k_tiles.transpose(-1, -2)
            if key_real is not None:
                scores.masked_fill_(~key_real[blocks][None, :, None, :], -math.inf)
            p = scores.sub_(lse.index_select(1, rows).view(hkv, w, -1, 1)).exp_()
            dv.index_add_(1, blocks, p.transpose(-1, -2) @ go_tiles)
            ds = go_tiles @ v_tiles.transpose(-1, -2)
            ds.sub_(delta.index_select(1, rows).view(hkv, w, -1, 1)).mul_(p)
            dq.index_add_(1, rows, (ds @ k_tiles).view(hkv, -1, g, d))
            dk.index_add_(1, blocks, ds.transpose(-1, -2) @ q_tiles)

        dtype_q, dtype_k, dtype_v = ctx.dtypes
        grad_q = (_unrows(dq, lay) * scale).to(dtype_q)
        grad_k, grad_v = _unblocks(dk, lay).to(dtype_k), _unblocks(dv, lay).to(dtype_v)
        return grad_q, grad_k, grad_v, None, None, None, None, None, None, None, None
