"""The bi-level routing attention kernel against independent references: SDPA (exact
attention), dense attention under the mask the routing implies (written out in
``reference.py``), leak and padding checks, gradcheck, and the two CPU paths against each other."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from plugformer.core.attention import MultiHeadAttention, repeat_kv
from plugformer.core.context import BuildContext
from plugformer.plugins.bra import BiLevelRoutingAttention, bra, n_regions, route
from .conftest import PATHS
from .reference import (
    CASES, attend_mask, implied_mask, padding, qkv, rows_with_keys, written_out,
)


# ---------------------------------------------------------------- exact attention ---------------


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("length", [64, 75])
@pytest.mark.parametrize("padded", [False, True])
def test_covering_topk_equals_exact_attention(causal, length, padded, path):
    q, k, v = qkv(lq=length, dtype=torch.float32)
    mask = padding(2, length, [length - 9, length]) if padded else None
    kernel = BiLevelRoutingAttention(
        heads=4, head_dim=8, region=16, topk=n_regions(length, 16), **path,
    )
    allowed = attend_mask(2, length, length, causal=causal, mask=mask)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
    out = kernel(q, k, v, mask=mask, causal=causal)
    rows = rows_with_keys(allowed).expand_as(out)
    torch.testing.assert_close(out[rows], expected[rows], atol=1e-5, rtol=0)


@pytest.mark.parametrize("lq", [1, 7, 30])
def test_covering_topk_equals_exact_attention_with_a_cache(lq, path):
    q, k, v = qkv(lq=lq, lk=70, hkv=2, dtype=torch.float32)
    kernel = BiLevelRoutingAttention(heads=4, head_dim=8, region=16, topk=5, **path)
    allowed = attend_mask(2, lq, 70, causal=True)
    expected = F.scaled_dot_product_attention(q, repeat_kv(k, 4), repeat_kv(v, 4), attn_mask=allowed)
    torch.testing.assert_close(kernel(q, k, v, causal=True), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("routing", ["region", "token"])
def test_covering_topk_equals_exact_cross_attention(routing, path):
    q, k, v = qkv(lq=30, lk=70, dtype=torch.float32)
    mask = padding(2, 70, [70, 41])
    kernel = BiLevelRoutingAttention(
        heads=4, head_dim=8, region=16, topk=5, routing=routing, cross=True, **path,
    )
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(kernel(q, k, v, mask=mask), expected, atol=1e-5, rtol=0)


# ---------------------------------------------------------------- routing-implied mask ---------


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("padded", [False, True])
def test_equals_dense_attention_under_the_routed_mask(case, padded, path):
    lq, lk, causal, routing = (CASES[case][key] for key in ("lq", "lk", "causal", "routing"))
    q, k, v = qkv(h=4, hkv=2, lq=lq, lk=lk)
    mask = padding(2, lk, [lk - 13, lk]) if padded else None
    key_valid = None if mask is None else mask[:, 0, 0]
    cross = lq != lk
    query_mask = key_valid if routing == "region" and not cross else None
    routes = route(
        q, k, region=8, topk=3, causal=causal, routing=routing, key_mask=key_valid, query_mask=query_mask
    )
    kernel = BiLevelRoutingAttention(
        heads=4, head_dim=8, region=8, topk=3, routing=routing, cross=cross, **path,
    )
    allowed = attend_mask(2, lq, lk, causal=causal, mask=mask) & implied_mask(
        routes, token=routing == "token", b=2, lq=lq, lk=lk, region=8
    )
    expected = written_out(q, k, v, allowed)
    torch.testing.assert_close(kernel(q, k, v, mask=mask, causal=causal), expected, atol=1e-10, rtol=0)


def test_general_mask_and_bias_are_gathered_at_the_routed_cells(path):
    q, k, v = qkv(h=4, hkv=4, lq=40)
    general = torch.rand(2, 4, 40, 40, generator=torch.Generator().manual_seed(3)) > 0.3
    slope = torch.tensor([0.5, -0.25, 0.1, 0.0], dtype=torch.float64)

    def bias(q_idx, k_idx):
        return slope.view(-1, *([1] * max(q_idx.dim(), k_idx.dim()))) * (k_idx - q_idx)

    kernel = BiLevelRoutingAttention(heads=4, head_dim=8, region=8, topk=2, **path)
    routes = route(q, k, region=8, topk=2, key_mask=general.any(2).any(1))
    allowed = general & implied_mask(routes, token=False, b=2, lq=40, lk=40, region=8)
    grid = bias(torch.arange(40)[:, None], torch.arange(40)[None, :])  # (H, Lq, Lk)
    expected = written_out(q, k, v, allowed, bias=grid)
    torch.testing.assert_close(kernel(q, k, v, mask=general, score_bias=bias), expected, atol=1e-10, rtol=0)


def test_fully_masked_rows_give_zeros(path):
    q, k, v = qkv(lq=24)
    mask = padding(2, 24, [0, 24])
    out = BiLevelRoutingAttention(
        heads=4, head_dim=8, region=8, topk=2, **path,
    )(q, k, v, mask=mask)
    assert torch.equal(out[0], torch.zeros_like(out[0]))
    assert torch.isfinite(out).all()
    early = BiLevelRoutingAttention(
        heads=4, head_dim=8, region=8, topk=2, **path,
    )(*qkv(lq=10, lk=6), causal=True)
    assert torch.equal(early[:, :, :4], torch.zeros_like(early[:, :, :4]))  # positions -4..-1


# ---------------------------------------------------------------- leaks ---------------------------


@pytest.mark.parametrize("t", [20, 24])
@pytest.mark.parametrize("lce", [0, 3])
def test_causal_attention_leaks_nothing(t, lce, path):
    torch.manual_seed(0)
    kernel = BiLevelRoutingAttention(
        heads=4, head_dim=8, region=8, topk=3, lce=lce, **path,
    ).double()
    q, k, v = qkv(lq=48)
    before = kernel(q, k, v, causal=True)
    changed = [x.clone() for x in (q, k, v)]
    for x in changed:
        x[:, :, t:] = torch.randn_like(x[:, :, t:]) * 10
    after = kernel(*changed, causal=True)
    torch.testing.assert_close(after[:, :, :t], before[:, :, :t], atol=1e-6, rtol=0)
    assert (after[:, :, t:] - before[:, :, t:]).abs().max() > 1e-3


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("lce", [0, 3])
def test_padded_positions_do_not_reach_real_tokens(causal, lce, path):
    torch.manual_seed(0)
    kernel = BiLevelRoutingAttention(
        heads=4, head_dim=8, region=8, topk=2, lce=lce, **path,
    ).double()
    q, k, v = qkv(lq=45)
    mask = padding(2, 45, [30, 37])
    before = kernel(q, k, v, mask=mask, causal=causal)
    changed = [x.clone() for x in (q, k, v)]
    real = mask[:, 0, 0]
    for x in changed:
        noise = torch.randn_like(x) * 10
        x[~real[:, None, :, None].expand_as(x)] = noise[~real[:, None, :, None].expand_as(x)]
    after = kernel(*changed, mask=mask, causal=causal)
    rows = real[:, None, :, None].expand_as(after)
    torch.testing.assert_close(after[rows], before[rows], atol=1e-10, rtol=0)


# ---------------------------------------------------------------- gradients ----------------------


@pytest.mark.parametrize("routing,causal", [("region", False), ("token", True), ("token", False)])
def test_gradcheck(routing, causal, path):
    q, k, v = qkv(b=1, h=2, hkv=1, lq=19, dh=4)
    mask = padding(1, 19, [17])
    kernel = BiLevelRoutingAttention(
        heads=2, head_dim=4, region=4, topk=2, routing=routing, **path,
    )
    inputs = [x.requires_grad_() for x in (q, k, v)]
    assert torch.autograd.gradcheck(lambda *x: kernel(*x, mask=mask, causal=causal), inputs, fast_mode=True)


@pytest.mark.parametrize("lq", [1, 3])
def test_gradcheck_of_a_cached_step_with_padding_and_bias(lq, path):
    q, k, v = qkv(b=2, h=2, hkv=1, lq=lq, lk=19, dh=4)
    mask = padding(2, 19, [17, 19])
    slope = torch.tensor([0.3, -0.2], dtype=torch.float64)
    kernel = BiLevelRoutingAttention(heads=2, head_dim=4, region=4, topk=2, **path)

    def attend(q, k, v, slope):
        def bias(q_idx, k_idx):
            distance = k_idx - q_idx
            return slope.view(-1, *[1] * distance.dim()) * distance  # (H, *grid)

        return kernel(q, k, v, mask=mask, causal=True, score_bias=bias)

    inputs = [x.requires_grad_() for x in (q, k, v, slope)]
    assert torch.autograd.gradcheck(attend, inputs, fast_mode=True)


def test_gradcheck_with_bias_and_dropout(path):
    q, k, v = qkv(b=1, h=2, hkv=2, lq=13, dh=4)
    slope = torch.tensor([0.3, -0.2], dtype=torch.float64)
    kernel = BiLevelRoutingAttention(
        heads=2, head_dim=4, region=4, topk=2, dropout=0.3, **path,
    ).train()

    def attend(q, k, v, slope):
        torch.manual_seed(1)  # the same dropout mask on every call
        return kernel(q, k, v, causal=True, score_bias=lambda qi, ki: slope[:, None, None, None] * (ki - qi))

    inputs = [x.requires_grad_() for x in (q, k, v, slope)]
    assert torch.autograd.gradcheck(attend, inputs, fast_mode=True)


def test_backward_is_deterministic(path):
    q, k, v = qkv(lq=40, h=4, hkv=2, dtype=torch.float32)
    kernel = BiLevelRoutingAttention(heads=4, head_dim=8, region=8, topk=2, **path)
    grads = []
    with _deterministic():
        for causal in (False, True, False, True):
            inputs = [x.clone().requires_grad_() for x in (q, k, v)]
            kernel(*inputs, causal=causal).square().sum().backward()
            grads.append([x.grad for x in inputs])
    for first, second in ((grads[0], grads[2]), (grads[1], grads[3])):
        for a, b in zip(first, second):
            assert torch.equal(a, b)


class _deterministic:
    def __enter__(self):
        self.before = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(True)

    def __exit__(self, *exc):
        torch.use_deterministic_algorithms(self.before)


# ---------------------------------------------------------------- variants -----------------------


@pytest.mark.parametrize("causal", [False, True])
def test_grouped_query_attention_equals_repeated_keys(causal, path):
    q, k, v = qkv(h=4, hkv=2, lq=37)
    kernel = BiLevelRoutingAttention(heads=4, head_dim=8, region=8, topk=2, **path)
    grouped = kernel(q, k, v, causal=causal)
    repeated = kernel(q, repeat_kv(k, 4), repeat_kv(v, 4), causal=causal)
    torch.testing.assert_close(grouped, repeated, atol=1e-12, rtol=0)


@pytest.mark.parametrize("causal", [False, True])
def test_bfloat16_is_close_to_float32(causal, path):
    q, k, v = qkv(lq=48, dtype=torch.float32)
    kernel = BiLevelRoutingAttention(
        heads=4, head_dim=8, region=8, topk=6, **path,
    )  # covering: no routing ties
    full = kernel(q, k, v, causal=causal)
    half = kernel(*(x.bfloat16() for x in (q, k, v)), causal=causal)
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), full, atol=3e-2, rtol=3e-2)


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-6), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("padded", [False, True])
def test_the_cpu_paths_agree(dtype, tol, causal, padded):
    q, k, v = qkv(lq=45, dtype=dtype)
    mask = padding(2, 45, [45, 30]) if padded else None
    outs = []
    for other in PATHS.values():
        kernel = BiLevelRoutingAttention(heads=4, head_dim=8, region=8, topk=2, **other)
        outs.append(kernel(q, k, v, mask=mask, causal=causal))
    assert all(out.dtype == dtype for out in outs)
    for out in outs[1:]:
        torch.testing.assert_close(out.float(), outs[0].float(), atol=tol, rtol=0)


def test_dropout_only_while_training(path):
    q, k, v = qkv(lq=32)
    kernel = BiLevelRoutingAttention(
        heads=4, head_dim=8, region=8, topk=2, dropout=0.5, **path,
    )
    eval_out = kernel.eval()(q, k, v)
    torch.testing.assert_close(kernel.eval()(q, k, v), eval_out)
    assert not torch.allclose(kernel.train()(q, k, v), eval_out)


def test_local_context_parameters_live_under_the_kernel(path):
    ctx = BuildContext(d_model=32, heads=4, max_len=64)
    kernel = bra(ctx, **path, region=8, topk=2, lce=5)
    mha = MultiHeadAttention(d_model=32, heads=4, kv_heads=4, head_dim=8, kernel=kernel)
    assert kernel.lce.weight.shape == (32, 1, 5)
    assert {"kernel.lce.weight", "kernel.lce.bias"} <= set(mha.state_dict())
    x = torch.randn(2, 20, 32)
    out = mha(x)
    out.sum().backward()
    assert out.shape == (2, 20, 32) and kernel.lce.weight.grad is not None
    without = bra(ctx, **path, region=8, topk=2)
    q, k, v = qkv(lq=20, dtype=torch.float32)
    channels = v.transpose(-1, -2).reshape(2, 32, 20)
    conv = F.conv1d(channels, kernel.lce.weight, kernel.lce.bias, padding=2, groups=32)
    expected = without(q, k, v) + conv.view(2, 4, 8, 20).transpose(-1, -2)
    torch.testing.assert_close(kernel(q, k, v), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("causal", [False, True])
def test_inputs_laid_out_as_multi_head_attention_makes_them(causal, path):
    q, k, v = qkv(h=4, hkv=2, lq=45)
    strided = [x.transpose(1, 2).contiguous().transpose(1, 2) for x in (q, k, v)]  # (B, L, H, Dh) storage
    kernel = BiLevelRoutingAttention(heads=4, head_dim=8, region=8, topk=2, **path)
    expected = kernel(q, k, v, causal=causal)
    torch.testing.assert_close(kernel(*strided, causal=causal), expected, atol=1e-12, rtol=0)


def test_flex_backend_on_cpu_is_a_clear_error(path):
    kernel = BiLevelRoutingAttention(heads=4, head_dim=8, backend="flex", **path)
    with pytest.raises(RuntimeError, match="backend='flex'.*CUDA"):
        kernel(*qkv(lq=8))
