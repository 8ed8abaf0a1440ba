"""The GPU path of bi-level routing attention: ``flex_attention`` with a block mask from the routing.

The routing becomes a ``BlockMask`` with blocks of ``region`` tokens (the key regions each query
block attends: a query region's choice for region routing, the union of its tokens' choices for
token routing) and a ``mask_mod`` that repeats the exact per-token rule (chosen region, padding,
causality, a general mask). Compiled, flex skips the blocks the block mask leaves out; eager, it
ignores block sparsity and relies on the ``mask_mod`` alone, so both give the same result.
"""

from __future__ import annotations

import functools
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from plugformer.plugins.bra.routing import Geometry, chosen_regions

try:
    from torch.nn.attention.flex_attention import BlockMask, flex_attention
except ImportError:  # torch without flex_attention
    BlockMask = flex_attention = None


def available() -> bool:
    """Whether this torch has ``flex_attention``."""
    return flex_attention is not None


@functools.cache
def _compiled() -> Callable:
    return torch.compile(flex_attention, dynamic=False)


def block_mask(
    routes: Tensor, geometry: Geometry, *, key_valid: Optional[Tensor] = None, mask: Optional[Tensor] = None
) -> "BlockMask":
    """The ``BlockMask`` of a routing: routes (B, nq, S) (region) or (B, Lq, S) (token)."""
    lq, lk, region, token, causal = geometry.lq, geometry.lk, geometry.region, geometry.token, geometry.causal
    b = routes.shape[0]
    device = routes.device
    nk, nq = geometry.nk, geometry.nq
    chosen = chosen_regions(routes, nk)  # (B, nq or Lq, nk): may query (region) attend key region
    if token:
        chosen = F.pad(chosen, (0, 0, 0, nq * region - lq), value=False)  # (B, nq*R, nk)
        blocks = chosen.view(b, nq, region, nk).any(2)  # (B, nq, nk)
    else:
        blocks = chosen
    key_ok = torch.ones(b, lk, dtype=torch.bool, device=device) if key_valid is None else key_valid
    key_ok = F.pad(key_ok, (0, nk * region - lk), value=False)  # (B, nk*R)
    if mask is not None:
        mask = F.pad(mask, (0, nk * region - lk, 0, nq * region - lq), value=False)
    offset = lk - lq

    def mask_mod(b_idx, h_idx, q_idx, k_idx):
        query = q_idx if token else q_idx // region
        ok = chosen[b_idx, query, k_idx // region] & key_ok[b_idx, k_idx]
        if causal:
            ok = ok & (k_idx <= q_idx + offset)
        if mask is not None:
            ok = ok & mask[b_idx, h_idx if mask.shape[1] > 1 else 0, q_idx, k_idx]
        return ok

    kv_num_blocks = blocks.sum(-1, dtype=torch.int32)[:, None]  # (B, 1, nq)
    kv_indices = torch.argsort((~blocks).to(torch.int8), dim=-1, stable=True).to(torch.int32)[:, None]
    return BlockMask.from_kv_blocks(
        kv_num_blocks, kv_indices, BLOCK_SIZE=region, mask_mod=mask_mod, seq_lengths=(lq, lk)
    )


def flex_bra(q: Tensor, k: Tensor, v: Tensor, routes: Tensor, geometry: Geometry, *, scale: float,
             key_valid: Optional[Tensor] = None, mask: Optional[Tensor] = None,
             score_bias: Optional[Callable[[Tensor, Tensor], Tensor]] = None, compile: bool = True) -> Tensor:
    """Bi-level routing attention by ``flex_attention``: arguments and result as
    :func:`.cpu.masked_dense` (without dropout), and ``compile``: run the compiled kernel (the
    fast one); eager materialises every score. A query with no key to attend gets zeros.
    """
    if not available():
        raise RuntimeError("bra: this torch has no torch.nn.attention.flex_attention; use backend='torch'")
    if mask is not None:
        mask = mask.expand(q.shape[0], -1, geometry.lq, geometry.lk)
    blocks = block_mask(routes, geometry, key_valid=key_valid, mask=mask)
    attend = _compiled() if compile else flex_attention
    return attend(
        q, k, v, score_mod=None if score_bias is None else _score_mod(score_bias), block_mask=blocks, scale=scale,
        enable_gqa=q.shape[1] != k.shape[1],
    )


def _score_mod(bias: Callable[[Tensor, Tensor], Tensor]) -> Callable:
    """flex_attention's score_mod adding ``bias(q_idx, k_idx)[h]``."""

    def score_mod(score, b_idx, h_idx, q_idx, k_idx):
        return score + bias(q_idx, k_idx)[h_idx].to(score.dtype)

    return score_mod
