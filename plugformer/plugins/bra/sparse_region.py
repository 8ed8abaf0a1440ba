"""Region tiles of :mod:`.sparse` (BiFormer's region routing): every query lives in one tile.

Tile t holds query rows t*R .. t*R + R - 1 and one softmax per row over its S chosen regions.
The work runs key/value head by key/value head on head-major copies made once per call (queries
(Hkv, T, G*R, Dh), key regions (Hkv, Nb, R, Dh)), so a chunk's queries are a slice and its keys
one ``index_select``, both contiguous: no copy per chunk (the profile of the token-major layout
at 8,192 tokens spent a third of its time in reshape copies and gathers). The forward keeps only
the inputs and the output; the backward, an operator that ``FlopCounterMode`` counts as four
products (twice the forward, as it counts SDPA), recomputes the scores.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable
from torch.utils.flop_counter import register_flop_formula

from plugformer.plugins.bra.tile_ops import (
    Summing, apply_dropout, dropout_seed, grad_scores, grad_values, keep_mask, parts, scaled_bmm,
)


def region_attention(q: Tensor, k: Tensor, v: Tensor, bias: Optional[Tensor], blocks: Tensor,
                     blocked: Optional[Tensor], live: Optional[Tensor], scale: float, dropout: float) -> Tensor:
    """q: (T*R, H, Dh); k, v: (Nb, R, Hkv, Dh); blocks: (T, S); bias, blocked: score layout
    (T, Hkv or 1, G*R, S*R); live: (T*R, 1 or H, 1). Returns (T*R, H, Dh)."""
    return _RegionAttention.apply(q, k, v, bias, blocks, blocked, live, scale, dropout)


class _RegionAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, bias, blocks, blocked, live, scale, dropout):
        seed = dropout_seed(dropout)
        region, kv_heads = k.shape[1], k.shape[2]
        qh, kh, vh = _head_rows(q, kv_heads, region), _head_blocks(k), _head_blocks(v)
        out = torch.empty_like(qh)  # (Hkv, T, G*R, Dh)
        for index, (part, head) in enumerate(_chunks(qh, blocks, region)):
            qt, kt, vt = qh[head, part], _take(kh[head], blocks[part]), _take(vh[head], blocks[part])
            p = torch.softmax(_scores(qt, kt, scale, bias, blocked, part, head), dim=-1)
            torch.bmm(apply_dropout(p, dropout, seed, index), vt, out=out[head, part])
        out = _token_rows(out, region)
        if live is not None:
            out.mul_(live)
        ctx.save_for_backward(q, k, v, bias, blocks, blocked, live, out)
        ctx.scale, ctx.dropout, ctx.seed = scale, dropout, seed
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        q, k, v, bias, blocks, blocked, live, out = ctx.saved_tensors
        dq, dk, dv, dbias = region_backward(grad_out, q, k, v, bias, blocks, blocked, live, out, ctx.scale,
                                            ctx.dropout, ctx.seed, ctx.needs_input_grad[3])
        return dq, dk, dv, dbias if ctx.needs_input_grad[3] else None, None, None, None, None, None


@torch.library.custom_op("plugformer_bra::region_backward", mutates_args=())
def region_backward(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, bias: Optional[Tensor], blocks: Tensor,
                    blocked: Optional[Tensor], live: Optional[Tensor], out: Tensor, scale: float, dropout: float,
                    seed: int, bias_grad: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The backward of :func:`region_attention`: dq, dk, dv and dbias (empty unless ``bias_grad``)."""
    region, kv_heads = k.shape[1], k.shape[2]
    grad_out = grad_out if live is None else grad_out * live
    qh, kh, vh = _head_rows(q, kv_heads, region), _head_blocks(k), _head_blocks(v)
    goh = _head_rows(grad_out, kv_heads, region)
    delta = (goh * _head_rows(out, kv_heads, region)).sum(-1, keepdim=True)  # (Hkv, T, G*R, 1)
    dq = torch.empty_like(q, memory_format=torch.contiguous_format)  # (T*R, H, Dh), written per chunk
    dk, dv = torch.zeros_like(kh), torch.zeros_like(vh)  # (Hkv, Nb, R, Dh)
    dbias = torch.empty_like(bias) if bias_grad else q.new_empty(0)
    to_blocks = Summing(blocks, kh.shape[1], k.dtype)
    for index, (part, head) in enumerate(_chunks(qh, blocks, region)):
        qt, kt, vt = qh[head, part], _take(kh[head], blocks[part]), _take(vh[head], blocks[part])
        p = torch.softmax(_scores(qt, kt, scale, bias, blocked, part, head), dim=-1)
        keep = keep_mask(p, dropout, seed, index)
        dot = goh[head, part]  # (tc, G*R, Dh)
        to_blocks.add(dv[head], part, grad_values(p, dot, keep, dropout))
        ds = grad_scores(p, dot, vt, delta[head, part], keep, dropout)  # (tc, G*R, S*R)
        _put(dq, part, head, kv_heads, scaled_bmm(ds, kt, scale))
        to_blocks.add(dk[head], part, scaled_bmm(ds.transpose(1, 2), qt, scale))
        if bias_grad:
            dbias[part, head] = ds
    del qh, kh, vh, goh, delta
    return dq, dk.permute(1, 2, 0, 3), dv.permute(1, 2, 0, 3), dbias  # dk, dv: (Nb, R, Hkv, Dh) views


@region_backward.register_fake
def _(grad_out, q, k, v, bias, blocks, blocked, live, out, scale, dropout, seed, bias_grad):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape), q.new_empty(bias.shape if bias_grad else 0)


@register_flop_formula(torch.ops.plugformer_bra.region_backward)
def _region_backward_flops(grad_out_shape, q_shape, k_shape, *args, out_shape=None, **kwargs) -> int:
    """dP = dO V^T, dV = P^T dO, dQ = dS K, dK = dS^T Q over every tile cell (twice the forward, as
    FlopCounterMode counts SDPA's backward). q: (T*R, H, Dh); k: (Nb, R, Hkv, Dh); blocks (T, S)."""
    return 8 * q_shape[0] * args[2][1] * k_shape[1] * q_shape[1] * q_shape[2]


def _chunks(qh: Tensor, blocks: Tensor, region: int):
    """(tiles, key/value head) of each step, chunks of about CHUNK_ELEMENTS scores over all heads
    (20% faster than that many per head at 8,192 tokens, one thread), chunk-major so that a
    chunk's summing matrix serves every head. qh: (Hkv, T, G*R, Dh); blocks: (T, S)."""
    for part in parts(len(blocks), qh.shape[0] * qh.shape[2] * blocks.shape[1] * region):
        for head in range(qh.shape[0]):
            yield part, head


def _head_rows(x: Tensor, kv_heads: int, region: int) -> Tensor:
    """Query rows (T*R, H, X) -> (Hkv, T, G*R, X), row g*R + r of a tile, contiguous (a copy)."""
    t = x.shape[0] // region
    x = x.reshape(t, region, kv_heads, x.shape[1] // kv_heads, x.shape[2])  # (T, R, Hkv, G, X)
    return x.permute(2, 0, 3, 1, 4).reshape(kv_heads, t, -1, x.shape[4])


def _token_rows(x: Tensor, region: int) -> Tensor:
    """The inverse of :func:`_head_rows`: (Hkv, T, G*R, X) -> (T*R, H, X), contiguous."""
    kv_heads, t, rows, width = x.shape
    x = x.view(kv_heads, t, rows // region, region, width).permute(1, 3, 0, 2, 4)  # (T, R, Hkv, G, X)
    return x.reshape(t * region, -1, width)


def _put(x: Tensor, part: slice, head: int, kv_heads: int, values: Tensor) -> None:
    """Write ``values`` (tc, G*R, X) of key/value head ``head`` into the token-major rows
    (T*R, H, X) of tiles ``part``."""
    tc = part.stop - part.start
    region = values.shape[1] * kv_heads // x.shape[1]
    rows = x[part.start * region : part.stop * region].view(tc, region, kv_heads, -1, x.shape[2])[:, :, head]
    rows.copy_(values.view(tc, -1, region, x.shape[2]).transpose(1, 2))  # (tc, R, G, X)


def _head_blocks(x: Tensor) -> Tensor:
    """Key regions (Nb, R, Hkv, Dh) -> (Hkv, Nb, R, Dh), contiguous."""
    return x.permute(2, 0, 1, 3).contiguous()


def _take(x: Tensor, blocks: Tensor) -> Tensor:
    """Regions ``blocks`` (tc, S) of one head's x (Nb, R, Dh) -> (tc, S*R, Dh), contiguous."""
    return x.index_select(0, blocks.flatten()).view(blocks.shape[0], -1, x.shape[2])


def _scores(q: Tensor, k: Tensor, scale: float, bias: Optional[Tensor], blocked: Optional[Tensor], part: slice,
            head: int) -> Tensor:
    """scale * q (tc, G*R, Dh) @ k (tc, S*R, Dh)^T [+ bias], blocked cells at the lowest float."""
    scores = scaled_bmm(q, k.transpose(1, 2), scale)
    if bias is not None:
        scores.add_(bias[part, head])
    if blocked is not None:
        scores.masked_fill_(blocked[part, head if blocked.shape[1] > 1 else 0], torch.finfo(scores.dtype).min)
    return scores
