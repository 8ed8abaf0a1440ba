"""grouped_causal_attention against dense softmax attention under the brute-force routed mask."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from plugformer.plugins.bra.grouped import grouped_causal_attention, grouped_plan


def random_routes(b: int, length: int, region: int, topk: int, seed: int) -> torch.Tensor:
    """Causal token routing's format: slot 0 the own region, then distinct earlier regions, -1 empty."""
    gen = torch.Generator().manual_seed(seed)
    n = math.ceil(length / region)
    slots = min(topk, n)
    chosen = torch.full((b, length, slots), -1, dtype=torch.long)
    for bi in range(b):
        for i in range(length):
            own = i // region
            chosen[bi, i, 0] = own
            earlier = torch.randperm(own, generator=gen)[: slots - 1]
            chosen[bi, i, 1: 1 + earlier.numel()] = earlier
    return chosen


def brute_mask(chosen, length, region, key_valid=None) -> torch.Tensor:
    """(B, 1, L, L) bool: query i sees key j iff j's region is chosen, j <= i and j is real."""
    b = chosen.shape[0]
    mask = torch.zeros(b, 1, length, length, dtype=torch.bool)
    for bi in range(b):
        for i in range(length):
            regions = set(chosen[bi, i].tolist())
            for j in range(i + 1):
                real = key_valid is None or bool(key_valid[bi, j])
                mask[bi, 0, i, j] = (j // region) in regions and real
    return mask


def dense_reference(q, k, v, mask, scale=None):
    """Explicit softmax attention; a row that sees nothing gives zeros."""
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = (q @ k.transpose(-1, -2) * scale).masked_fill(~mask, -math.inf)
    weights = torch.softmax(scores, -1).nan_to_num(0.0)
    return weights @ v


def make_qkv(b, h, hkv, length, d, seed, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    shapes = [(b, h, length, d), (b, hkv, length, d), (b, hkv, length, d)]
    return [torch.randn(s, generator=gen, dtype=dtype).requires_grad_() for s in shapes]


def grads(out, tensors, seed=0):
    gen = torch.Generator().manual_seed(seed)
    upstream = torch.randn(out.shape, generator=gen, dtype=out.dtype)
    return torch.autograd.grad(out, tensors, upstream)


@pytest.mark.parametrize(
    "length, region, topk, h, hkv",
    [(64, 8, 3, 4, 4), (70, 8, 3, 4, 2), (45, 16, 2, 2, 1), (33, 4, 5, 3, 3), (30, 8, 1, 2, 2)],
)
@pytest.mark.parametrize("fused", [True, False])
def test_matches_dense_attention_under_the_routed_mask(length, region, topk, h, hkv, fused):
    q, k, v = make_qkv(2, h, hkv, length, 16, seed=length)
    chosen = random_routes(2, length, region, topk, seed=1)
    out = grouped_causal_attention(q, k, v, chosen, region=region, rows=8, fused=fused)
    expected = dense_reference(q, k, v, brute_mask(chosen, length, region))
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    for got, want in zip(grads(out, (q, k, v)), grads(expected, (q, k, v))):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("length, region", [(64, 8), (50, 8)])
@pytest.mark.parametrize("fused", [True, False])
def test_every_region_chosen_is_exact_causal_attention(length, region, fused):
    q, k, v = make_qkv(1, 4, 2, length, 8, seed=3)
    n = math.ceil(length / region)
    chosen = random_routes(1, length, region, n, seed=2)
    out = grouped_causal_attention(q, k, v, chosen, region=region, rows=4, fused=fused)
    expected = F.scaled_dot_product_attention(
        q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), is_causal=True
    )
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    for got, want in zip(grads(out, (q, k, v)), grads(expected, (q, k, v))):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_padded_keys_get_no_weight_and_blind_rows_give_zeros():
    length, region = 40, 8
    q, k, v = make_qkv(2, 2, 2, length, 8, seed=4)
    chosen = random_routes(2, length, region, 3, seed=5)
    key_valid = torch.ones(2, length, dtype=torch.bool)
    key_valid[0, :3] = False  # queries 0-2 of batch 0 see no key at all
    key_valid[1, 17:26] = False
    out = grouped_causal_attention(q, k, v, chosen, region=region, key_valid=key_valid, rows=4)
    expected = dense_reference(q, k, v, brute_mask(chosen, length, region, key_valid))
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(out[0, :, :3], torch.zeros_like(out[0, :, :3]))
    gq, gk, gv = grads(out, (q, k, v))
    for got, want in zip((gq, gk, gv), grads(expected, (q, k, v))):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    padded = ~key_valid[:, None, :, None].expand_as(gv)
    assert torch.all(gv[padded] == 0) and torch.all(gk[padded] == 0)


def test_repeated_future_and_missing_own_regions_follow_the_mask():
    length, region = 32, 4
    q, k, v = make_qkv(1, 2, 1, length, 8, seed=6)
    gen = torch.Generator().manual_seed(7)
    chosen = torch.randint(-1, length // region, (1, length, 4), generator=gen)  # anything goes
    out = grouped_causal_attention(q, k, v, chosen, region=region, rows=3)
    expected = dense_reference(q, k, v, brute_mask(chosen, length, region))
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    for got, want in zip(grads(out, (q, k, v)), grads(expected, (q, k, v))):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("padded", [True, False])
def test_gradcheck_float64(padded):
    length, region = 11, 4
    q, k, v = make_qkv(1, 2, 1, length, 3, seed=8, dtype=torch.float64)
    chosen = random_routes(1, length, region, 2, seed=9)
    key_valid = None
    if padded:  # the plain-matmul path; without a mask the fused one
        key_valid = torch.ones(1, length, dtype=torch.bool)
        key_valid[0, 5] = False

    def attention(q, k, v):
        return grouped_causal_attention(q, k, v, chosen, region=region, key_valid=key_valid, rows=2)

    assert torch.autograd.gradcheck(attention, (q, k, v))


@pytest.mark.parametrize("fused", [True, False])
def test_no_causal_leak(fused):
    length, region, t = 48, 8, 21  # t in the middle of region 2
    q, k, v = make_qkv(1, 4, 2, length, 8, seed=10)
    chosen = random_routes(1, length, region, 3, seed=11)
    before = grouped_causal_attention(q, k, v, chosen, region=region, rows=4, fused=fused)
    q2, k2, v2 = (x.detach().clone() for x in (q, k, v))
    for x in (q2, k2, v2):
        x[:, :, t:] = torch.randn_like(x[:, :, t:]) * 5
    chosen2 = chosen.clone()
    chosen2[:, t:] = random_routes(1, length, region, 3, seed=12)[:, t:]
    after = grouped_causal_attention(q2, k2, v2, chosen2, region=region, rows=4, fused=fused)
    assert torch.equal(before[:, :, :t], after[:, :, :t])
    assert not torch.allclose(before[:, :, t:], after[:, :, t:])


@pytest.mark.parametrize("fused", [True, False])
def test_tile_size_and_budget_do_not_change_the_result(fused):
    length, region = 96, 8
    q, k, v = make_qkv(1, 4, 4, length, 8, seed=13)
    chosen = random_routes(1, length, region, 4, seed=14)
    base = grouped_causal_attention(q, k, v, chosen, region=region, rows=64, fused=fused)
    for rows, budget in ((1, 1), (5, 200), (16, 10**9)):
        out = grouped_causal_attention(q, k, v, chosen, region=region, rows=rows, tile_budget=budget,
                                       fused=fused)
        torch.testing.assert_close(out, base, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("fused", [True, False])
def test_bfloat16_computes_in_float32(fused):
    length, region = 40, 8
    q, k, v = make_qkv(1, 2, 2, length, 8, seed=15)
    chosen = random_routes(1, length, region, 3, seed=16)
    low = [x.detach().bfloat16().requires_grad_() for x in (q, k, v)]
    out = grouped_causal_attention(*low, chosen, region=region, fused=fused)
    expected = dense_reference(*(x.detach().float() for x in low), brute_mask(chosen, length, region))
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected, atol=1e-2, rtol=1e-2)
    out.float().sum().backward()
    assert all(x.grad.dtype == torch.bfloat16 and torch.isfinite(x.grad.float()).all() for x in low)


def test_work_is_topk_tiles_not_the_union():
    """Every (query, earlier region) pair sits in exactly one tile slot."""
    length, region, topk = 256, 16, 4
    chosen = random_routes(2, length, region, topk, seed=17)
    plan = grouped_plan(chosen, length=length, region=region, rows=8)
    pairs = int((chosen[..., 1:] >= 0).sum())
    assert int((plan.rows != plan.null).sum()) == pairs
    n = length // region
    counts, widths = plan.widths[::2], plan.widths[1::2]
    assert widths == (8, 2)
    assert sum(c * w for c, w in zip(counts, widths)) == plan.rows.numel()
    assert sum(counts) == plan.blocks.numel()
    assert plan.rows.numel() <= pairs + 2 * n * (widths[1] - 1)  # a region leaves < one narrow tile empty
    # every filled slot holds a query of a later region than the tile's keys, of the same batch row
    tile_of_slot = torch.repeat_interleave(plan.blocks, torch.repeat_interleave(torch.tensor(widths),
                                                                                torch.tensor(counts)))
    filled = plan.rows != plan.null
    query, region_of_tile = plan.rows[filled], tile_of_slot[filled]
    padded = n * region
    assert torch.equal(query // padded, region_of_tile // n)
    assert bool(((query % padded) // region > region_of_tile % n).all())


def test_errors_name_the_argument():
    q, k, v = make_qkv(1, 3, 2, 16, 4, seed=18)
    chosen = random_routes(1, 16, 4, 2, seed=19)
    with pytest.raises(ValueError, match="multiple of Hkv"):
        grouped_causal_attention(q, k, v, chosen, region=4)
    q, k, v = make_qkv(1, 2, 2, 16, 4, seed=18)
    with pytest.raises(ValueError, match=r"chosen must hold region indices in \[-1, 4\)"):
        grouped_causal_attention(q, k, v, chosen + 3, region=4)
    with pytest.raises(ValueError, match="rows must be >= 1; got 0"):
        grouped_causal_attention(q, k, v, chosen, region=4, rows=0)
    with pytest.raises(ValueError, match=r"chosen must be a \(B=1, L=16, S\) long tensor"):
        grouped_causal_attention(q, k, v, chosen[:, :8], region=4)
