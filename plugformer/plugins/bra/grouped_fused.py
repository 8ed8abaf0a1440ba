"""The fused path of :mod:`.grouped`: PyTorch's CPU flash-attention kernel on every block.

Lu et al., "MoBA: Mixture of Block Attention for Long-Context LLMs" (2025). The diagonal blocks
(each region's queries on its own keys, causal) and the tiles of :func:`.grouped.grouped_plan`
(up to ``rows`` queries that chose one earlier region, on its keys) each go through
``aten._scaled_dot_product_flash_attention_for_cpu``; a query's partial results merge through
their log-sum-exp, online over groups of tiles. The backward passes every block the *merged*
output and log-sum-exp, as MoBA does, so the kernel's gradients are those of the full softmax.

The forward and the backward are custom operators (``plugformer_bra::grouped_forward``,
``plugformer_bra::grouped_backward``) with registered FLOP formulas, so that
``torch.utils.flop_counter.FlopCounterMode`` counts what the routing asks for (the diagonal
blocks whole, as it counts a causal attention, and region keys for each (query, earlier region)
pair), not the empty slots of the tiles nor the kernel's recomputation: forward
4 * H * Dh * (B * n * R**2 + pairs * R), backward twice that, as FlopCounterMode counts SDPA.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula

from plugformer.plugins.bra.grouped_masked import tile_groups

FLASH = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
FLASH_BACKWARD = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)


def fused_grouped_attention(q: Tensor, k: Tensor, v: Tensor, rows: Tensor, blocks: Tensor, widths: Sequence[int], *,
                            region: int, scale: float, budget: int, pairs: int) -> Tensor:
    """Grouped causal attention by the fused kernel: (B, H, L, D) out in q's dtype.

    q: (B, H, L, D); k, v: (B, Hkv, L, D); ``rows``, ``blocks``: a plan's tiles (every query
    chose its own region, no key padding), ``widths`` its runs of tile widths; ``pairs``: the filled tile
    slots, for the FLOP count.
    """
    return _FusedGroupedAttention.apply(q, k, v, rows, blocks, list(widths), region, scale, budget, pairs)


class _FusedGroupedAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, rows, blocks, widths, region, scale, budget, pairs):
        b, h, length, d = q.shape
        out, lse = grouped_forward(q, k, v, rows, blocks, widths, region, scale, budget, pairs)  # (B*Lp, H, D)
        ctx.save_for_backward(q, k, v, out, lse, rows, blocks)
        ctx.options = (widths, region, scale, budget, pairs)
        padded = out.shape[0] // b
        return out.view(b, padded, h, d)[:, :length].transpose(1, 2).to(q.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse, rows, blocks = ctx.saved_tensors
        dq, dk, dv = grouped_backward(grad_out, q, k, v, out, lse, rows, blocks, *ctx.options)
        return dq, dk, dv, None, None, None, None, None, None, None


def _work_dtype(x: Tensor) -> torch.dtype:
    return torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype


@torch.library.custom_op("plugformer_bra::grouped_forward", mutates_args=())
def grouped_forward(q: Tensor, k: Tensor, v: Tensor, rows: Tensor, blocks: Tensor, widths: list[int], region: int,
                    scale: float, budget: int, pairs: int) -> tuple[Tensor, Tensor]:
    """Rows are flat b * Lp + i, regions flat b * n + j; empty tile slots (row B * Lp) read row 0
    and are given no weight. Returns the merged output (B * Lp, H, D) and log-sum-exp (B * Lp, H)
    in the working dtype (float32 for half inputs)."""
    dtype = _work_dtype(q)
    b, h, length, d = q.shape
    n = math.ceil(length / region)
    padded = n * region
    qr = _query_rows(q, padded, dtype)  # (B * Lp, H, D), a view of q when B = 1 and L = Lp
    kr, vr = (_key_blocks(x, region, padded, dtype) for x in (k, v))  # (B * n, Hkv, R, D)
    filled = rows < b * padded
    rows = rows.masked_fill(~filled, 0)

    q_diag = qr.view(b * n, region, h, d).transpose(1, 2)  # (B * n, H, R, D)
    out, lse = FLASH(q_diag, _by_head(kr, h), _by_head(vr, h), 0.0, True, scale=scale)
    acc = out.transpose(1, 2).reshape(b * padded, h, d)
    top = lse.transpose(1, 2).reshape(b * padded, h)
    total = torch.ones_like(top)  # (B * Lp, H): sum of exp(lse - top) over the blocks

    for start, group_rows, group_blocks in _groups(rows, blocks, widths, h, region, budget):
        w = group_blocks.numel()
        real = filled[start: start + group_rows.numel(), None]
        q_tiles = qr.index_select(0, group_rows).view(w, -1, h, d).transpose(1, 2)  # (w, H, C, D)
        k_tiles, v_tiles = (_by_head(x.index_select(0, group_blocks), h) for x in (kr, vr))
        out, lse = FLASH(q_tiles, k_tiles, v_tiles, 0.0, False, scale=scale)
        out = out.transpose(1, 2).reshape(-1, h, d)  # (w * C, H, D)
        lse = lse.transpose(1, 2).reshape(-1, h).masked_fill(~real, -math.inf)
        new_top = top.scatter_reduce(0, group_rows[:, None].expand_as(lse), lse, "amax")
        rescale = torch.exp(top - new_top)
        touched = acc.index_select(0, group_rows).mul_(rescale.index_select(0, group_rows)[..., None])
        acc.index_copy_(0, group_rows, touched)  # only this group's rows changed their maximum
        total.mul_(rescale)
        weight = torch.exp(lse - new_top.index_select(0, group_rows))
        acc.index_add_(0, group_rows, out.mul_(weight[..., None]))
        total.index_add_(0, group_rows, weight)
        top = new_top
    return acc.div_(total[..., None]), top + torch.log(total)


@grouped_forward.register_fake
def _(q, k, v, rows, blocks, widths, region, scale, budget, pairs):
    b, h, length, d = q.shape
    padded = math.ceil(length / region) * region
    dtype = _work_dtype(q)
    return q.new_empty(b * padded, h, d, dtype=dtype), q.new_empty(b * padded, h, dtype=dtype)


@torch.library.custom_op("plugformer_bra::grouped_backward", mutates_args=())
def grouped_backward(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, rows: Tensor,
                     blocks: Tensor, widths: list[int], region: int, scale: float, budget: int,
                     pairs: int) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of :func:`grouped_forward` for q, k and v, in their shapes and dtypes."""
    dtype = _work_dtype(q)
    b, h, length, d = q.shape
    hkv = k.shape[1]
    n = math.ceil(length / region)
    padded = n * region
    qr = _query_rows(q, padded, dtype)
    kr, vr = (_key_blocks(x, region, padded, dtype) for x in (k, v))
    go = _query_rows(grad_out, padded, dtype)  # (B * Lp, H, D), zero after L
    filled = rows < b * padded
    rows = rows.masked_fill(~filled, 0)

    def diagonal(x: Tensor) -> Tensor:  # (B * Lp, H, ...) -> (B * n, H, R, ...)
        return x.view(b * n, region, h, -1).transpose(1, 2)

    dq, dk, dv = FLASH_BACKWARD(
        diagonal(go), diagonal(qr), _by_head(kr, h), _by_head(vr, h), diagonal(out),
        diagonal(lse[..., None])[..., 0], 0.0, True, scale=scale,
    )
    dq = dq.transpose(1, 2).reshape(b * padded, h, d)
    # head-major (Hkv, B * n, R, D), so that the gradients leave as views, not copies
    dk = _by_kv_head(dk, hkv).transpose(0, 1).contiguous()  # one at a time: a single copy alive
    dv = _by_kv_head(dv, hkv).transpose(0, 1).contiguous()

    for start, group_rows, group_blocks in _groups(rows, blocks, widths, h, region, budget):
        w = group_blocks.numel()
        real = filled[start: start + group_rows.numel()].view(w, 1, -1, 1)  # (w, 1, C, 1)

        def tiles(x: Tensor) -> Tensor:  # (B * Lp, H, ...) -> (w, H, C, ...)
            return x.index_select(0, group_rows).view(w, -1, h, x[0, 0].numel()).transpose(1, 2)

        k_tiles, v_tiles = (_by_head(x.index_select(0, group_blocks), h) for x in (kr, vr))
        dq_t, dk_t, dv_t = FLASH_BACKWARD(
            tiles(go).mul(real), tiles(qr), k_tiles, v_tiles, tiles(out), tiles(lse[..., None])[..., 0],
            0.0, False, scale=scale,
        )
        dq.index_add_(0, group_rows, dq_t.transpose(1, 2).reshape(-1, h, d))
        dk.index_add_(1, group_blocks, _by_kv_head(dk_t, hkv).transpose(0, 1))
        dv.index_add_(1, group_blocks, _by_kv_head(dv_t, hkv).transpose(0, 1))

    grad_q = dq.view(b, padded, h, d)[:, :length].transpose(1, 2).to(q.dtype)
    grad_k, grad_v = (
        x.view(hkv, b, padded, d).transpose(0, 1)[:, :, :length].to(like.dtype)
        for x, like in ((dk, k), (dv, v))
    )
    return grad_q, grad_k, grad_v


@grouped_backward.register_fake
def _(grad_out, q, k, v, out, lse, rows, blocks, widths, region, scale, budget, pairs):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def grouped_flops(q_shape, region: int, pairs: int) -> int:
    """Forward FLOPs the routing asks for: QK^T and PV over every diagonal block (whole, as
    FlopCounterMode counts a causal attention) and the region keys of each (query, earlier
    region) pair. q_shape: (B, H, L, D)."""
    b, h, length, d = q_shape
    cells = b * math.ceil(length / region) * region * region + pairs * region
    return 4 * h * d * cells


@register_flop_formula(torch.ops.plugformer_bra.grouped_forward)
def _forward_flops(q_shape, k_shape, v_shape, rows_shape, blocks_shape, widths, region, scale, budget, pairs, *,
                   out_shape=None, **kwargs) -> int:
    return grouped_flops(q_shape, region, pairs)


@register_flop_formula(torch.ops.plugformer_bra.grouped_backward)
def _backward_flops(grad_out_shape, q_shape, k_shape, v_shape, out_shape_, lse_shape, rows_shape, blocks_shape,
                    widths, region, scale, budget, pairs, *, out_shape=None, **kwargs) -> int:
    return 2 * grouped_flops(q_shape, region, pairs)


def _by_head(x: Tensor, heads: int) -> Tensor:
    """(w, Hkv, R, D) key blocks -> (w, H, R, D), each key/value head repeated for its query heads."""
    w, hkv, r, d = x.shape
    if heads == hkv:
        return x
    return x[:, :, None].expand(w, hkv, heads // hkv, r, d).reshape(w, heads, r, d)


def _by_kv_head(x: Tensor, kv_heads: int) -> Tensor:
    """(w, H, R, D) gradients -> (w, Hkv, R, D), summed over the query heads of each key/value head."""
    w, h, r, d = x.shape
    return x if h == kv_heads else x.view(w, kv_heads, h // kv_heads, r, d).sum(2)


def _groups(rows: Tensor, blocks: Tensor, widths: Sequence[int], heads: int, region: int, budget: int):
    """:func:`.grouped_masked.tile_groups` with the offset of each group's first slot."""
    start = 0
    for group_rows, group_blocks in tile_groups(rows, blocks, widths, heads=heads, region=region, budget=budget):
        yield start, group_rows, group_blocks
        start += group_rows.numel()


def _query_rows(x: Tensor, padded: int, dtype: torch.dtype) -> Tensor:
    """(B, H, L, D) -> (B * Lp, H, D), zero rows after L; a view of x when B = 1 and L = Lp."""
    b, h, length, d = x.shape
    x = F.pad(x.to(dtype), (0, 0, 0, padded - length)) if padded != length else x.to(dtype)
    return x.transpose(1, 2).reshape(b * padded, h, d)


def _key_blocks(x: Tensor, region: int, padded: int, dtype: torch.dtype) -> Tensor:
    """(B, Hkv, L, D) -> (B * n, Hkv, R, D), zero keys after L; a view of x when B = 1 and L = Lp."""
    b, hkv, length, d = x.shape
    x = F.pad(x.to(dtype), (0, 0, 0, padded - length)) if padded != length else x.to(dtype)
    return x.view(b, hkv, -1, region, d).transpose(1, 2).reshape(-1, hkv, region, d)
