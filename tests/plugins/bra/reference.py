"""Independent references for the bi-level routing attention tests: random inputs, padding
masks, and attention written out from its formula under a given mask."""

from __future__ import annotations

import math

import torch

from plugformer.core.attention import repeat_kv

#: Routing cases: self-attention, cross-attention, causal, cached decoding, bidirectional tokens.
CASES = {
    "region": dict(lq=50, lk=50, causal=False, routing="region"),
    "region-cross": dict(lq=21, lk=50, causal=False, routing="region"),
    "token-causal": dict(lq=50, lk=50, causal=True, routing="token"),
    "token-cache": dict(lq=11, lk=50, causal=True, routing="token"),
    "token-bidirectional": dict(lq=50, lk=50, causal=False, routing="token"),
}


def qkv(b=2, h=4, hkv=4, lq=40, lk=None, dh=8, dtype=torch.float64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    lk = lq if lk is None else lk
    q = torch.randn(b, h, lq, dh, generator=generator, dtype=dtype)
    k = torch.randn(b, hkv, lk, dh, generator=generator, dtype=dtype)
    v = torch.randn(b, hkv, lk, dh, generator=generator, dtype=dtype)
    return q, k, v


def padding(b, lk, real):
    """(B, 1, 1, Lk) attend-mask: batch row i has ``real[i]`` real keys, then padding."""
    return (torch.arange(lk)[None, :] < torch.tensor(real)[:, None])[:, None, None, :]


def attend_mask(b, lq, lk, *, causal, mask=None):
    allowed = torch.ones(b, 1, lq, lk, dtype=torch.bool)
    if causal:
        allowed = allowed & (torch.arange(lk)[None, :] <= torch.arange(lk - lq, lk)[:, None])
    return allowed if mask is None else allowed & mask


def written_out(q, k, v, allowed, *, scale=None, bias=None):
    """softmax(q k^T * scale + bias) v with blocked scores at -inf; all-blocked rows give 0."""
    k, v = repeat_kv(k, q.shape[1]), repeat_kv(v, q.shape[1])
    scores = q @ k.transpose(-1, -2) * (q.shape[-1] ** -0.5 if scale is None else scale)
    if bias is not None:
        scores = scores + bias
    scores = scores.masked_fill(~allowed, -math.inf)
    weights = torch.softmax(scores, dim=-1).nan_to_num(0.0)
    return weights @ v


def implied_mask(routes, *, token, b, lq, lk, region):
    """(B, 1, Lq, Lk): query i may attend key j when j's region is among i's routes."""
    key_region = torch.arange(lk) // region  # (Lk,)
    if token:
        per_query = routes  # (B, Lq, S)
    else:
        per_query = routes[:, torch.arange(lq) // region]  # (B, Lq, S)
    return (per_query[..., None] == key_region).any(-2)[:, None]


def rows_with_keys(allowed):
    return allowed.any(-1, keepdim=True)
