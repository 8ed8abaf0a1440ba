"""Region tiles of :mod:`.sparse` (BiFormer's region routing): every query lives in one tile.

Tile t holds query rows t*R .. t*R + R - 1 and one softmax per row over its S chosen regions.
The work runs key/value head by key/value head on strided views of the token-major inputs: a
chunk's queries (and output gradients) are a view when each key/value head serves one query head
(a copy of the chunk otherwise), its keys one ``index_select`` of the head's regions. No
head-major copy of a whole input is made: at 16,384 tokens those copies (q, k, v and the output
gradient, 32 MiB each) were half the backward's peak memory. The forward keeps only the inputs
and the output; the backward, an operator that ``FlopCounterMode`` counts as four products
(twice the forward, as it counts SDPA), recomputes the scores.
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
        out = torch.empty_like(q, memory_format=torch.contiguous_format)  # (T*R, H, Dh)
        for index, (part, head) in enumerate(_chunks(q, blocks, kv_heads, region)):
            qt = _queries(q, part, head, kv_heads, region)
            kt, vt = _take(k, head, blocks[part]), _take(v, head, blocks[part])
            p = torch.softmax(_scores(qt, kt, scale, bias, blocked, part, head), dim=-1)
            _put(out, part, head, kv_heads, torch.bmm(apply_dropout(p, dropout, seed, index), vt))
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
    delta = (grad_out * out).sum(-1, keepdim=True)  # (T*R, H, 1)
    dq = torch.empty_like(q, memory_format=torch.contiguous_format)  # (T*R, H, Dh), written per chunk
    dk = k.new_zeros(kv_heads, *k.shape[:2], k.shape[3])  # (Hkv, Nb, R, Dh)
    dv = torch.zeros_like(dk)
    dbias = torch.empty_like(bias) if bias_grad else q.new_empty(0)
    to_blocks = Summing(blocks, k.shape[0], k.dtype)
    for index, (part, head) in enumerate(_chunks(q, blocks, kv_heads, region)):
        qt = _queries(q, part, head, kv_heads, region)
        kt, vt = _take(k, head, blocks[part]), _take(v, head, blocks[part])
        p = torch.softmax(_scores(qt, kt, scale, bias, blocked, part, head), dim=-1)
        keep = keep_mask(p, dropout, seed, index)
        dot = _queries(grad_out, part, head, kv_heads, region)  # (tc, G*R, Dh)
        to_blocks.add(dv[head], part, grad_values(p, dot, keep, dropout))
        ds = grad_scores(p, dot, vt, _queries(delta, part, head, kv_heads, region), keep, dropout)  # (tc, G*R, S*R)
        _put(dq, part, head, kv_heads, scaled_bmm(ds, kt, scale))
        to_blocks.add(dk[head], part, scaled_bmm(ds.transpose(1, 2), qt, scale))
        if bias_grad:
            dbias[part, head] = ds
    return dq, dk.permute(1, 2, 0, 3), dv.permute(1, 2, 0, 3), dbias  # dk, dv: (Nb, R, Hkv, Dh) views


@region_backward.register_fake
def _(grad_out, q, k, v, bias, blocks, blocked, live, out, scale, dropout, seed, bias_grad):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape), q.new_empty(bias.shape if bias_grad else 0)


@register_flop_formula(torch.ops.plugformer_bra.region_backward)
def _region_backward_flops(grad_out_shape, q_shape, k_shape, *args, out_shape=None, **kwargs) -> int:
    """dP = dO V^T, dV = P^T dO, dQ = dS K, dK = dS^T Q over every tile cell (twice the forward, as
    FlopCounterMode counts SDPA's backward). q: (T*R, H, Dh); k: (Nb, R, Hkv, Dh); blocks (T, S)."""
    return 8 * q_shape[0] * args[2][1] * k_shape[1] * q_shape[1] * q_shape[2]


def _chunks(q: Tensor, blocks: Tensor, kv_heads: int, region: int):
    """(tiles, key/value head) of each step, chunks of about CHUNK_ELEMENTS scores over all heads
    (20% faster than that many per head at 8,192 tokens, one thread), chunk-major so that a
    chunk's summing matrix serves every head. q: (T*R, H, Dh); blocks: (T, S)."""
    for part in parts(len(blocks), q.shape[1] * region * blocks.shape[1] * region):
        for head in range(kv_heads):
            yield part, head


def _queries(x: Tensor, part: slice, head: int, kv_heads: int, region: int) -> Tensor:
    """The rows of tiles ``part`` for key/value head ``head``: token-major (T*R, H, X) ->
    (tc, G*R, X), row g*R + r of a tile = query head head*G + g at token r; a strided view when
    G = 1, a copy of the chunk otherwise."""
    tc = part.stop - part.start
    rows = x[part.start * region : part.stop * region]  # (tc*R, H, X)
    groups = x.shape[1] // kv_heads
    if groups == 1:
        return rows[:, head].unflatten(0, (tc, region))
    rows = rows.reshape(tc, region, kv_heads, groups, x.shape[2])[:, :, head]  # (tc, R, G, X)
    return rows.transpose(1, 2).reshape(tc, groups * region, x.shape[2])


def _put(x: Tensor, part: slice, head: int, kv_heads: int, values: Tensor) -> None:
    """Write ``values`` (tc, G*R, X) of key/value head ``head`` into the token-major rows
    (T*R, H, X) of tiles ``part`` (the inverse of :func:`_queries`)."""
    tc = part.stop - part.start
    region = values.shape[1] * kv_heads // x.shape[1]
    rows = x[part.start * region : part.stop * region].view(tc, region, kv_heads, -1, x.shape[2])[:, :, head]
    rows.copy_(values.view(tc, -1, region, x.shape[2]).transpose(1, 2))  # (tc, R, G, X)


def _take(x: Tensor, head: int, blocks: Tensor) -> Tensor:
    """Regions ``blocks`` (tc, S) of key/value head ``head`` of x (Nb, R, Hkv, Dh) -> (tc, S*R, Dh),
    contiguous."""
    return x[:, :, head].index_select(0, blocks.flatten()).view(blocks.shape[0], -1, x.shape[3])


def _scores(q: Tensor, k: Tensor, scale: float, bias: Optional[Tensor], blocked: Optional[Tensor], part: slice,
            head: int) -> Tensor:
    """scale * q (tc, G*R, Dh) @ k (tc, S*R, Dh)^T [+ bias], blocked cells at the lowest float."""
    scores = scaled_bmm(q, k.transpose(1, 2), scale)
    if bias is not None:
        scores.add_(bias[part, head])
    if blocked is not None:
        scores.masked_fill_(blocked[part, head if blocked.shape[1] > 1 else 0], torch.finfo(scores.dtype).min)
    return scores
