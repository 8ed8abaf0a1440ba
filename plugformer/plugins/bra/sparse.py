"""Block-sparse attention over gathered tiles: the CPU path of bi-level routing attention.

The attention is a flash-style ``autograd.Function`` over the tiles of :mod:`.tiles`: region
tiles in :mod:`.sparse_region` (head by head on head-major copies), token tiles here. Chunk by
chunk of tiles (all heads at once, so that the number of operations does not grow with the
heads), it gathers the chosen key regions with ``index_select`` (never ``gather`` on an
expanded view, whose backward materialises the expansion), runs batched matmuls and a
written-out masked softmax, and keeps for the backward only q, k, v, the output and, for token
tiles, one log-sum-exp per query row; the backward recomputes the scores. Memory therefore
stays near that of q, k and v whatever the length. Sums into places (the gradient of a key
region from every tile that chose it, a query's output from each of its tiles) multiply by a
sparse matrix of ones (:mod:`.tile_ops`).

Layouts: token-major outside the chunks, as multi-head attention lays heads out (queries and
outputs (N, H, Dh), key regions (Nb, R, Hkv, Dh), usually views of the inputs, no copies);
inside a chunk, the matmul batch (tc * Hkv, G * C, X) with G = H // Hkv query heads per
key/value head and row g * C + c of a tile.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from plugformer.plugins.bra.sparse_region import region_attention
from plugformer.plugins.bra.tile_ops import (
    Summing, apply_dropout, dropout_seed, grad_scores, grad_values, keep_mask, parts, scaled_bmm, summing_matrix, zeros,
)
from plugformer.plugins.bra.tiles import Tiles


def tiled_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    tiles: Tiles,
    *,
    region: int,
    allowed: Optional[Tensor],
    scale: float,
    bias: Optional[Tensor] = None,
    dropout: float = 0.0,
) -> Tensor:
    """Softmax attention of every query over the keys of its tiles.

    Args:
        q: (B, H, Lq, Dh).
        k, v: (B, Hkv, Lk, Dh), ``H % Hkv == 0``.
        tiles: the tiles, see :class:`.tiles.Tiles`.
        region: tokens per key region (R).
        allowed: which tile cells may attend, from :func:`.tiles.tile_mask`.
        scale: multiplies q k^T.
        bias: additive scores (H, T, C, S * R), or None.
        dropout: dropout probability on the attention weights (0 = off).

    Returns:
        (B, H, Lq, Dh), stored as (B, Lq, H, Dh); a query with no allowed key gets zeros.
        Half-precision inputs are computed in float32 and the result cast back.
    """
    b, h, lq, dh = q.shape
    kv_heads = k.shape[1]
    work = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
    rows = _token_major(q.to(work), 1 if tiles.shared_rows else region)  # (N, H, Dh)
    k_blocks = _token_major(k.to(work), region).view(-1, region, kv_heads, dh)  # (Nb, R, Hkv, Dh)
    v_blocks = _token_major(v.to(work), region).view(-1, region, kv_heads, dh)
    blocked = None if allowed is None else _score_layout(~allowed, h, kv_heads)  # (T, 1|Hkv, G*C, S*R)
    if bias is not None:
        bias = _score_layout(bias.to(work), h, kv_heads)  # (T, Hkv, G*C, S*R)
    live = None if allowed is None else _live_rows(allowed, tiles, rows.shape[0])  # (N, 1|H, 1)
    if tiles.shared_rows:
        out = _TokenAttention.apply(
            rows, k_blocks, v_blocks, bias, tiles.rows, tiles.blocks, blocked, live, scale, dropout
        )
    else:
        out = region_attention(rows, k_blocks, v_blocks, bias, tiles.blocks, blocked, live, scale, dropout)
    return out.view(b, -1, h, dh)[:, :lq].transpose(1, 2).to(q.dtype)


class _TokenAttention(torch.autograd.Function):
    """Token tiles: a query has a row in every tile of a region it chose; its softmax spans them.

    q: (N, H, Dh) query rows; k, v: (Nb, R, Hkv, Dh); rows: (T, C); blocks: (T, 1); bias,
    blocked: score layout; live: (N, 1 or H, 1). Returns (N, H, Dh).
    """

    @staticmethod
    def forward(ctx, q, k, v, bias, rows, blocks, blocked, live, scale, dropout):
        seed = dropout_seed(dropout)
        n, heads, dh = q.shape
        kv_heads, c = k.shape[2], rows.shape[1]
        lse = _token_lse(q, k, bias, rows, blocks, blocked, scale)  # (T, Hkv, G*C, 1)
        out = q.new_zeros(n, heads * dh)
        to_rows = Summing(rows, n, q.dtype)
        for index, part in enumerate(parts(len(rows), heads * c * k.shape[1])):
            qt = _to_batch(q.index_select(0, rows[part].flatten()), kv_heads, c)  # (tc*Hkv, G*C, Dh)
            kt, vt = _take(k, blocks[part]), _take(v, blocks[part])  # (tc*Hkv, R, Dh)
            p = _scores(qt, kt, scale, bias, blocked, part).sub_(_flat(lse[part])).exp_()
            o = torch.bmm(apply_dropout(p, dropout, seed, index), vt)
            to_rows.add(out, part, _from_batch(o, kv_heads, c))
        out = out.view(n, heads, dh)
        if live is not None:
            out.mul_(live)
        ctx.save_for_backward(q, k, v, bias, rows, blocks, blocked, live, out, lse)
        ctx.scale, ctx.dropout, ctx.seed = scale, dropout, seed
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        q, k, v, bias, rows, blocks, blocked, live, out, lse = ctx.saved_tensors
        n, heads, dh = q.shape
        kv_heads, c = k.shape[2], rows.shape[1]
        grad_out = grad_out.contiguous() if live is None else grad_out * live
        delta = (grad_out * out).sum(-1, keepdim=True)  # (N, H, 1)
        dq, dk, dv = q.new_zeros(n, heads * dh), zeros(k), zeros(v)
        dbias = torch.empty_like(bias) if ctx.needs_input_grad[3] else None
        to_rows, to_blocks = Summing(rows, n, q.dtype), Summing(blocks, k.shape[0], k.dtype)
        for index, part in enumerate(parts(len(rows), heads * c * k.shape[1])):
            flat = rows[part].flatten()
            qt = _to_batch(q.index_select(0, flat), kv_heads, c)
            dot = _to_batch(grad_out.index_select(0, flat), kv_heads, c)
            delta_part = _to_batch(delta.index_select(0, flat), kv_heads, c)
            kt, vt = _take(k, blocks[part]), _take(v, blocks[part])
            p = _scores(qt, kt, ctx.scale, bias, blocked, part).sub_(_flat(lse[part])).exp_()
            keep = keep_mask(p, ctx.dropout, ctx.seed, index)
            to_blocks.add(dv, part, _block_major(grad_values(p, dot, keep, ctx.dropout), k))
            ds = grad_scores(p, dot, vt, delta_part, keep, ctx.dropout)
            to_rows.add(dq, part, _from_batch(scaled_bmm(ds, kt, ctx.scale), kv_heads, c))
            to_blocks.add(dk, part, _block_major(scaled_bmm(ds.transpose(1, 2), qt, ctx.scale), k))
            if dbias is not None:
                dbias[part] = ds.view_as(dbias[part])
        return dq.view(n, heads, dh), dk, dv, dbias, None, None, None, None, None, None


def _flat(x: Tensor) -> Tensor:
    """(tc, Hkv, Y, X) -> (tc * Hkv, Y, X), the batch of the matmuls."""
    return x.reshape(-1, *x.shape[2:])


def _to_batch(x: Tensor, kv_heads: int, c: int) -> Tensor:
    """Query rows of tc tiles (tc * C, H, X) -> the matmul batch (tc * Hkv, G * C, X)."""
    x = _tile_rows(x, kv_heads, c).permute(0, 2, 3, 1, 4)  # (tc, Hkv, G, C, X)
    return x.reshape(-1, x.shape[2] * c, x.shape[4])


def _tile_rows(x: Tensor, kv_heads: int, c: int) -> Tensor:
    """Query rows of tc tiles (tc * C, H, X) as (tc, C, Hkv, G, X), a view."""
    return x.view(-1, c, kv_heads, x.shape[1] // kv_heads, x.shape[2])


def _from_batch(x: Tensor, kv_heads: int, c: int) -> Tensor:
    """The inverse of :func:`_to_batch`, a view: (tc * Hkv, G * C, X) -> (tc, C, Hkv, G, X)."""
    groups = x.shape[1] // c
    return x.view(-1, kv_heads, groups, c, x.shape[2]).permute(0, 3, 1, 2, 4)


def _take(x: Tensor, blocks: Tensor) -> Tensor:
    """Key regions ``blocks`` (tc, S) of x (Nb, R, Hkv, Dh) -> (tc * Hkv, S * R, Dh)."""
    tc, slots = blocks.shape
    _, region, kv_heads, dh = x.shape
    picked = x.index_select(0, blocks.flatten()).view(tc, slots, region, kv_heads, dh)
    return picked.permute(0, 3, 1, 2, 4).reshape(tc * kv_heads, slots * region, dh)


def _block_major(x: Tensor, k: Tensor) -> Tensor:
    """The inverse layout of :func:`_take`, a view: (tc * Hkv, S * R, Dh) -> (tc, S, R, Hkv, Dh)."""
    _, region, kv_heads, dh = k.shape
    x = x.view(-1, kv_heads, x.shape[1] // region, region, dh)  # (tc, Hkv, S, R, Dh)
    return x.permute(0, 2, 3, 1, 4)


def _scores(
    q: Tensor, k: Tensor, scale: float, bias: Optional[Tensor], blocked: Optional[Tensor], part: slice
) -> Tensor:
    """scale * q (tc*Hkv, G*C, Dh) @ k (tc*Hkv, S*R, Dh)^T [+ bias], blocked cells at the lowest
    float: (tc*Hkv, G*C, S*R)."""
    scores = scaled_bmm(q, k.transpose(1, 2), scale)
    if bias is not None or blocked is not None:
        per_tile = scores.view(part.stop - part.start, -1, *scores.shape[1:])  # (tc, Hkv, G*C, S*R)
        if bias is not None:
            per_tile.add_(bias[part])
        if blocked is not None:
            per_tile.masked_fill_(blocked[part], torch.finfo(scores.dtype).min)
    return scores


def _token_lse(q, k, bias, rows, blocks, blocked, scale) -> Tensor:
    """First pass over token tiles: each query's log-sum-exp over all its tiles, (T, Hkv, G*C, 1)."""
    n, heads, _ = q.shape
    kv_heads = k.shape[2]
    t, c = rows.shape
    per_row = q.new_empty(t * kv_heads, heads // kv_heads * c, 1)
    for part in parts(t, heads * c * k.shape[1]):
        qt = _to_batch(q.index_select(0, rows[part].flatten()), kv_heads, c)
        scores = _scores(qt, _take(k, blocks[part]), scale, bias, blocked, part)
        per_row[part.start * kv_heads : part.stop * kv_heads] = torch.logsumexp(scores, dim=-1, keepdim=True)
    per_row = _from_batch(per_row, kv_heads, c).reshape(t * c, heads)  # (T*C, H)
    flat = rows.flatten()
    top = q.new_full((n, heads), torch.finfo(q.dtype).min)
    top = top.scatter_reduce_(0, flat[:, None].expand(-1, heads), per_row, "amax")  # (N, H)
    total = summing_matrix(flat, n, q.dtype) @ (per_row - top[flat]).exp_()  # (N, H)
    lse = (top + total.log())[flat]  # (T*C, H)
    return _to_batch(lse[..., None], kv_heads, c).view(t, kv_heads, -1, 1)


def _live_rows(allowed: Tensor, tiles: Tiles, n: int) -> Tensor:
    """Whether each query row has any key to attend: allowed (…, T, C, X) -> (N, 1 or H, 1)."""
    per_row = allowed.any(-1)  # (T, C) or (H, T, C)
    per_row = per_row.reshape(-1, 1) if per_row.dim() == 2 else per_row.flatten(1).T  # (T*C, 1|H)
    if tiles.shared_rows:
        per_row = summing_matrix(tiles.rows.flatten(), n, torch.float32) @ per_row.float() > 0  # (N, 1|H)
    return per_row[..., None]


def _token_major(x: Tensor, multiple: int) -> Tensor:
    """(B, Hx, L, Dh) -> (B * L', Hx, Dh), L' the length padded with zeros to a multiple of
    ``multiple``; a view when x is stored (B, L, Hx, Dh), as multi-head attention makes it."""
    b, hx, length, dh = x.shape
    x = x.transpose(1, 2)  # (B, L, Hx, Dh)
    pad = -length % multiple
    if pad:
        x = F.pad(x, (0, 0, 0, 0, 0, pad))
    return x.reshape(-1, hx, dh)


def _score_layout(x: Tensor, heads: int, kv_heads: int) -> Tensor:
    """(T, C, X) or (H, T, C, X) -> (T, 1 or Hkv, G * C, X): rows g * C + c of a tile's scores."""
    groups = heads // kv_heads
    if x.dim() == 3:
        t, c, width = x.shape
        return x[:, None, None].expand(t, 1, groups, c, width).reshape(t, 1, groups * c, width)
    _, t, c, width = x.shape
    x = x.view(kv_heads, groups, t, c, width).permute(2, 0, 1, 3, 4)
    return x.reshape(t, kv_heads, groups * c, width)
