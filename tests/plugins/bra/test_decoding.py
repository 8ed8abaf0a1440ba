"""Region sums kept in the KV cache (``decoding.py``) against recomputing them from every cached
key: the same means bit for bit, hence the same routes and outputs, through a prefill and
decoding steps that cross region boundaries and end in a partial region, beam reorders, grouped
heads and bfloat16; and no state where it would not be exact (masks, cross-attention)."""

from __future__ import annotations

import pytest
import torch

import plugformer
from plugformer.core.cache import KVCache
from plugformer.plugins.bra import BiLevelRoutingAttention, route
from plugformer.plugins.bra.decoding import MEANS, WHOLE, cached_key_means
from plugformer.plugins.bra.local_context import LocalContext
from plugformer.plugins.bra.routing import region_means, routing_precision
from .reference import padding

R, B, H, DH = 8, 3, 4, 8
#: A prefill of 13 keys (a partial second region), then steps of 1 to 16 keys: the cache crosses
#: the boundaries 16, 24, 32, 40 and 56 and ends at 60, in a partial region again.
CHUNKS = [13, 1, 1, 1, 5, 1, 8, 1, 2, 16, 1, 10]


def chunk(n: int, *, hkv: int = H, dtype=torch.float32, seed: int = 0) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, heads, n, DH, generator=gen) for heads in (H, hkv, hkv))
    return q.to(dtype), k.to(dtype), v.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("hkv", [H, 2])
def test_kept_means_equal_recomputed_means_bit_for_bit(dtype, hkv):
    cache = KVCache()
    for i, n in enumerate(CHUNKS):
        cache.append(*chunk(n, hkv=hkv, dtype=dtype, seed=i)[1:])
        kept = cached_key_means(cache.k, cache.state, R)
        expected, _ = region_means(routing_precision(cache.k), None, R)
        assert kept.dtype == torch.float32 and torch.equal(kept, expected)
        assert cache.state[WHOLE] == len(cache) // R and cache.state[MEANS].shape[2] >= kept.shape[2]


def test_a_step_reads_the_new_keys_and_the_partial_region_only():
    cache = KVCache()
    cache.append(*chunk(21)[1:])  # two whole regions and 5 keys
    cached_key_means(cache.k, cache.state, R)
    cache.append(*chunk(4, seed=1)[1:])
    expected, _ = region_means(cache.k, None, R)
    cache.k[:, :, : 2 * R] = float("nan")  # what the state has summed is not read again
    kept = cached_key_means(cache.k, cache.state, R)
    assert torch.equal(kept, expected)


def test_a_state_that_does_not_fit_the_cache_is_rebuilt():
    cache = KVCache()
    cache.append(*chunk(20)[1:])
    cached_key_means(cache.k, cache.state, R)
    other = KVCache()  # the state of a longer cache, handed a shorter one
    other.append(*chunk(9, seed=2)[1:])
    other.state.update(cache.state)
    expected, _ = region_means(other.k, None, R)
    assert torch.equal(cached_key_means(other.k, other.state, R), expected)
    assert torch.equal(cached_key_means(other.k, other.state, 4), region_means(other.k, None, 4)[0])


@pytest.mark.parametrize("hkv", [H, 2])
@pytest.mark.parametrize("lce", [0, 3])
def test_decoding_with_the_state_equals_the_stateless_kernel(hkv, lce, path):
    kernel = BiLevelRoutingAttention(heads=H, head_dim=DH, region=R, topk=3, lce=lce, **path)
    cache = KVCache()
    for i, n in enumerate(CHUNKS):
        q, k, v = chunk(n, hkv=hkv, seed=i)
        k, v = cache.append(k, v)
        with_state = kernel(q, k, v, causal=True, kv_cache=cache)
        assert torch.equal(with_state, kernel(q, k, v, causal=True))
        kept = route(q, k, region=R, topk=3, causal=True, routing="token",
                     key_means=cached_key_means(k, dict(cache.state), R))
        assert torch.equal(kept, kernel.route(q, k, causal=True))
    assert MEANS in cache.state


def test_the_state_follows_beam_reorders():
    kernel = BiLevelRoutingAttention(heads=H, head_dim=DH, region=R, topk=2)
    cache = KVCache()
    index = [torch.tensor([2, 0, 0]), torch.tensor([1, 1, 2]), torch.tensor([0, 2, 1])]
    for i, n in enumerate([14, 1, 1, 3, 1, 1, 6, 1]):
        q, k, v = chunk(n, seed=i)
        k, v = cache.append(k, v)
        assert torch.equal(kernel(q, k, v, causal=True, kv_cache=cache), kernel(q, k, v, causal=True))
        if i < len(index):
            cache.reorder(index[i])
            expected, _ = region_means(cache.k, None, R)
            assert torch.equal(cached_key_means(cache.k, cache.state, R), expected)


def test_no_state_where_it_would_not_be_exact():
    kernel = BiLevelRoutingAttention(heads=H, head_dim=DH, region=R, topk=2)
    q, k, v = chunk(20)
    padded = KVCache(k, v)  # left-padded prompts: regions cut by token position, pads left out
    mask = padding(B, 20, [20, 17, 11]).flip(-1)
    kernel(q[:, :, -1:], padded.k, padded.v, mask=mask, causal=True, kv_cache=padded)
    cross = KVCache(k, v, static=True)
    kernel(q, cross.k, cross.v, kv_cache=cross)
    bidirectional = KVCache(k, v)
    kernel(q[:, :, -3:], bidirectional.k, bidirectional.v, kv_cache=bidirectional)
    assert padded.state == cross.state == bidirectional.state == {}


@pytest.mark.parametrize("beams", [1, 3])
def test_generation_with_the_cache_equals_generation_without(beams):
    torch.manual_seed(0)
    model = plugformer.build("gpt_tiny(attn=bra(region=4, topk=2), kv_heads=2)", vocab=64).eval()
    prompt = torch.randint(3, 64, (2, 11))
    cached = model.generate(prompt, 14, beams=beams)
    assert torch.equal(cached, model.generate(prompt, 14, beams=beams, use_cache=False))


def test_the_local_context_of_a_step_reads_its_window_only():
    lce = LocalContext(heads=H, head_dim=DH, kernel_size=5)
    v = torch.randn(B, 2, 30, DH)
    valid = torch.rand(B, 30) > 0.2
    full = lce(v, heads=H, lq=30, causal=True, key_valid=valid)  # every position, as training does
    v[:, :, : 30 - 3 - 4] = float("nan")  # before the window of the last 3 queries
    with torch.no_grad():
        torch.testing.assert_close(lce(v, heads=H, lq=3, causal=True, key_valid=valid), full[:, :, -3:])


@pytest.mark.parametrize("lk", [1, 7, 8, 9, 16, 40, 41])
@pytest.mark.parametrize("topk", [1, 3, 9])
def test_one_query_routes_as_the_last_of_several(lk, topk):
    q, k, _ = chunk(lk, hkv=2)
    several = route(q, k, region=R, topk=topk, causal=True, routing="token")  # the general rule
    one = route(q[:, :, -1:], k, region=R, topk=topk, causal=True, routing="token")
    assert torch.equal(one, several[:, -1:])
