"""``cpu.gathered`` (a cached step: the keys of each query's chosen regions copied row by row)
against ``cpu.masked_dense`` (every score under the routed mask), over the layouts it meets:
cache buffers, a buffer that starts inside its storage, the packed projections; grouped heads,
masks, biases and half precision."""

from __future__ import annotations

import pytest
import torch

from plugformer.core.cache import KVCache
from plugformer.plugins.bra import route
from plugformer.plugins.bra.cpu import gathered, key_rows, masked_dense
from plugformer.plugins.bra.routing import Geometry

R, B, H, DH = 8, 2, 4, 8


def keys(lk: int, hkv: int, layout: str, *, dtype=torch.float64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """k, v (B, Hkv, Lk, Dh) held as a cache buffer (``cache``), as a buffer that starts inside
    its storage (``offset``), or in the projection's (B, Lk, Hkv, Dh) layout (``tokens``)."""
    gen = torch.Generator().manual_seed(seed)
    k, v = (torch.randn(B, hkv, lk, DH, generator=gen, dtype=dtype) for _ in range(2))
    if layout == "tokens":
        return k.transpose(1, 2).contiguous().transpose(1, 2), v.transpose(1, 2).contiguous().transpose(1, 2)
    if layout == "offset":
        storage = torch.zeros(2, B, hkv, lk + 3, DH, dtype=dtype)
        storage[1, :, :, :lk] = k
        return storage[1, :, :, :lk], v
    cache = KVCache()
    cache.reserve(lk + 3)
    return cache.append(k, v)


@pytest.mark.parametrize("layout", ["cache", "offset", "tokens"])
@pytest.mark.parametrize("lk", [40, 45, 5])
@pytest.mark.parametrize("hkv", [H, 2])
@pytest.mark.parametrize("lq", [1, 3])
def test_gathered_equals_every_score_under_the_routed_mask(layout, lk, hkv, lq):
    k, v = keys(lk, hkv, layout)
    q = torch.randn(B, H, lq, DH, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    routes = route(q, k, region=R, topk=3, causal=True, routing="token")
    geometry = Geometry(lq=lq, lk=lk, region=R, token=True, causal=True)
    expected = masked_dense(q, k, v, routes, geometry, scale=0.3)
    torch.testing.assert_close(gathered(q, k, v, routes, geometry, scale=0.3), expected)


@pytest.mark.parametrize("heads_in_mask", [1, H])
def test_gathered_honours_masks_and_score_biases(heads_in_mask):
    lk, lq = 45, 2
    k, v = keys(lk, 2, "cache")
    q = torch.randn(B, H, lq, DH, dtype=torch.float64)
    key_valid = torch.rand(B, lk) > 0.2
    mask = torch.rand(B, heads_in_mask, lq, lk) > 0.3
    slopes = torch.linspace(0.1, 0.4, H, dtype=torch.float64)

    def score_bias(q_idx, k_idx):
        return -slopes.view(-1, *[1] * (q_idx + k_idx).dim()) * (q_idx + lk - lq - k_idx).abs()

    routes = route(q, k, region=R, topk=4, causal=True, routing="token", key_mask=key_valid)
    routes[0, 0, 1] = -1  # an empty slot
    geometry = Geometry(lq=lq, lk=lk, region=R, token=True, causal=True)
    options = dict(scale=0.3, key_valid=key_valid, mask=mask, score_bias=score_bias)
    torch.testing.assert_close(gathered(q, k, v, routes, geometry, **options),
                               masked_dense(q, k, v, routes, geometry, **options))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gathered_computes_half_precision_in_float32(dtype):
    k, v = keys(45, 2, "cache", dtype=dtype)
    q = torch.randn(B, H, 1, DH).to(dtype)
    routes = route(q, k, region=R, topk=3, causal=True, routing="token")
    geometry = Geometry(lq=1, lk=45, region=R, token=True, causal=True)
    out = gathered(q, k, v, routes, geometry, scale=0.3)
    assert out.dtype == dtype
    torch.testing.assert_close(out, masked_dense(q, k, v, routes, geometry, scale=0.3), atol=0, rtol=0)


@pytest.mark.parametrize("layout", ["cache", "offset", "tokens"])
def test_key_rows_are_the_rows_asked_for_of_every_head(layout):
    k, _ = keys(45, 2, layout)
    index = torch.tensor([[44, 0, 7, 8, 8], [3, 2, 1, 40, 41]])
    rows, again = key_rows(index, k, k.transpose(1, 2).contiguous().transpose(1, 2))  # (B, Hkv, 5, Dh)
    for b in range(B):
        assert torch.equal(rows[b], k[b, :, index[b]]) and torch.equal(again[b], k[b, :, index[b]])


def test_key_rows_of_broadcast_keys_are_gathered_not_read_as_a_table():
    """Keys expanded over batch and heads (strides 0) are no cache buffer: gathered, right."""
    from plugformer.plugins.bra.cpu import key_rows

    base = torch.randn(1, 1, 10, 4)
    k = base.expand(2, 3, 10, 4)
    index = torch.tensor([[0, 9, 4], [1, 2, 3]])
    (rows,) = key_rows(index, k)
    expected = torch.stack([base[0, 0, index[b]] for b in range(2)])[:, None].expand(2, 3, 3, 4)
    torch.testing.assert_close(rows, expected)
