"""KVCache: a growing buffer written in place, checked against the torch.cat of every append;
reserve, reorder (with the kernel state), static caches, and which kernels receive the cache."""

from typing import Optional

import pytest
import torch
from torch import Tensor

from plugformer.core.attention import MultiHeadAttention
from plugformer.core.cache import KVCache, LayerCache
from plugformer.core.interfaces import AttentionKernel

B, HKV, DH = 3, 2, 4


def chunks(*lengths: int, seed: int = 0) -> list[tuple[Tensor, Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(B, HKV, n, DH, generator=gen), torch.randn(B, HKV, n, DH, generator=gen)) for n in lengths]


def test_appends_equal_the_concatenation_of_every_chunk_and_grow_geometrically():
    cache = KVCache()
    assert cache.k is None and cache.v is None and len(cache) == 0
    parts = chunks(5, *[1] * 40, 3)
    capacities = []
    for i, (k, v) in enumerate(parts):
        all_k, all_v = cache.append(k, v)
        expected_k = torch.cat([p[0] for p in parts[: i + 1]], dim=2)
        expected_v = torch.cat([p[1] for p in parts[: i + 1]], dim=2)
        assert torch.equal(all_k, expected_k) and torch.equal(all_v, expected_v)
        assert torch.equal(cache.k, expected_k) and len(cache) == expected_k.shape[2]
        capacities.append(cache.capacity)
    grown = sorted(set(capacities))
    assert grown == [5, 10, 20, 40, 80]  # exact first, then doubling: 4 copies for 48 tokens
    assert all(c >= n for c, n in zip(capacities, range(5, 49)))


def test_keys_are_views_of_one_buffer_written_in_place():
    cache = KVCache()
    cache.reserve(10)
    first, _ = cache.append(*chunks(4)[0])
    pointer = first.data_ptr()
    for k, v in chunks(1, 1, 1, seed=1):
        all_k, _ = cache.append(k, v)
        assert all_k.data_ptr() == pointer and all_k._base is not None  # a view, nothing moved
    assert not cache.k.is_contiguous() and cache.capacity == 10


def test_reserve_preallocates_exactly_and_later_grows_keeping_the_contents():
    cache = KVCache()
    cache.reserve(7)
    parts = chunks(3, 1, 1, 1, 1)
    for k, v in parts:
        cache.append(k, v)
    assert cache.capacity == 7 and len(cache) == 7
    cache.reserve(12)  # the buffers exist: grown now
    assert cache.capacity == 12
    assert torch.equal(cache.k, torch.cat([p[0] for p in parts], dim=2))
    cache.reserve(2)  # never shrinks
    assert cache.capacity == 12
    with pytest.raises(ValueError, match="capacity must be >= 0, got -1"):
        cache.reserve(-1)


def test_layer_cache_reserves_its_self_attention_only():
    layer = LayerCache()
    layer.reserve(6)
    layer.self_attn.append(*chunks(2)[0])
    layer.cross_attn.append(*chunks(3)[0])
    assert layer.self_attn.capacity == 6 and layer.cross_attn.capacity == 3


def test_reorder_selects_rows_of_keys_values_and_tensor_state():
    cache = KVCache()
    parts = chunks(4, 1, 1)
    for k, v in parts[:2]:
        cache.append(k, v)
    cache.state["sums"] = torch.arange(B * 2.0).view(B, 2)
    cache.state["region"] = 8
    index = torch.tensor([2, 0, 0])
    cache.reorder(index)
    cache.append(*parts[2])
    expected = torch.cat([p[0] for p in parts[:2]], dim=2).index_select(0, index)
    assert torch.equal(cache.k, torch.cat([expected, parts[2][0]], dim=2))
    assert torch.equal(cache.state["sums"], torch.tensor([[4.0, 5.0], [0.0, 1.0], [0.0, 1.0]]))
    assert cache.state["region"] == 8


def test_a_static_cache_keeps_the_tensors_it_was_given():
    cache = KVCache(static=True)
    k, v = chunks(5)[0]
    assert cache.append(k, v) == (k, v)
    assert cache.k is k and cache.v is v and len(cache) == 5


def test_appends_that_do_not_continue_the_cache_are_refused():
    cache = KVCache(*chunks(2)[0])
    with pytest.raises(ValueError, match=rf"has key/value heads Hkv = {HKV + 1} .* the cache holds {HKV}"):
        cache.append(torch.randn(B, HKV + 1, 1, DH), torch.randn(B, HKV + 1, 1, DH))
    with pytest.raises(ValueError, match=rf"has batch B = {B + 1} .* the cache holds {B}"):
        cache.append(torch.randn(B + 1, HKV, 1, DH), torch.randn(B + 1, HKV, 1, DH))
    with pytest.raises(ValueError, match="must be 4-d"):
        KVCache().append(torch.randn(HKV, 1, DH), torch.randn(HKV, 1, DH))
    with pytest.raises(IndexError, match=rf"batch rows in \[0, {B}\)"):
        cache.reorder(torch.tensor([0, B]))
    with pytest.raises(ValueError, match="must be \\(B, Hkv, Ln, Dh\\) alike"):
        cache.append(torch.randn(B, HKV, 1, DH), torch.randn(B, HKV, 2, DH))
    with pytest.raises(ValueError, match="give both k and v"):
        KVCache(torch.randn(B, HKV, 1, DH))


def test_a_wider_dtype_widens_the_cache_as_concatenation_does():
    cache = KVCache()
    k, v = chunks(2)[0]
    cache.append(k.bfloat16(), v.bfloat16())
    cache.append(k, v)
    assert cache.k.dtype == torch.float32
    assert torch.equal(cache.k, torch.cat([k.bfloat16().float(), k], dim=2))


def test_keys_recorded_by_autograd_are_never_overwritten():
    cache = KVCache()
    cache.reserve(8)
    w = torch.randn(DH, requires_grad=True)
    total = 0
    for k, v in chunks(2, 1, 1):
        all_k, all_v = cache.append(k * w, v * w)
        total = total + (all_k * all_v).sum()
    total.backward()  # an in-place write into a saved key would raise here
    parts = chunks(2, 1, 1)
    expected = sum(
        (torch.cat([p[0] for p in parts[: i + 1]], 2) * torch.cat([p[1] for p in parts[: i + 1]], 2)).sum((0, 1, 2))
        for i in range(3)
    )
    torch.testing.assert_close(w.grad, 2 * w.detach() * expected)


class Recording(AttentionKernel):
    """Exact attention that records the kv_cache it was handed."""

    def __init__(self, uses_state: bool) -> None:
        super().__init__()
        self.uses_cache_state = uses_state
        self.seen: list = []

    def forward(self, q, k, v, *, mask=None, causal=False, score_bias=None, **extra):
        self.seen.append(extra.get("kv_cache", "absent"))
        lq, lk = q.shape[2], k.shape[2]
        allowed = torch.ones(lq, lk, dtype=torch.bool).tril(lk - lq) if causal else None
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=allowed)


@pytest.mark.parametrize("uses_state", [False, True])
def test_only_kernels_that_declare_uses_cache_state_receive_the_cache(uses_state):
    kernel = Recording(uses_state)
    attention = MultiHeadAttention(d_model=8, heads=2, kv_heads=2, head_dim=4, kernel=kernel)
    x = torch.randn(1, 3, 8)
    cache: Optional[KVCache] = KVCache()
    attention(x, causal=True)
    attention(x, causal=True, cache=cache)
    if uses_state:
        assert kernel.seen == ["absent", cache]
    else:
        assert kernel.seen == ["absent", "absent"]
