"""Bi-level routing attention against independent references: SDPA (exact attention), dense
attention under the mask the routing implies (written out here), leak and padding checks,
gradcheck, and the flex_attention path (eager on CPU, compiled on GPU)."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from plugformer.core.attention import MultiHeadAttention, repeat_kv
from plugformer.core.context import BuildContext
from plugformer.plugins import bra as bra_module
from plugformer.plugins import bra_flex
from plugformer.plugins.bra import BiLevelRoutingAttention, bra, route
from plugformer.plugins.bra_routing import n_regions


@pytest.fixture(autouse=True, params=["tiles", "masked"])
def cpu_path(request, monkeypatch):
    """Every test runs on both CPU paths: the gathered tiles, and (what short inputs take)
    every score under the routed mask."""
    monkeypatch.setattr(bra_module, "DENSE_UP_TO", 0 if request.param == "tiles" else 1 << 30)
    return request.param


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


# ---------------------------------------------------------------- exact attention ---------------


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("length", [64, 75])
@pytest.mark.parametrize("padded", [False, True])
def test_covering_topk_equals_exact_attention(causal, length, padded):
    q, k, v = qkv(lq=length, dtype=torch.float32)
    mask = padding(2, length, [length - 9, length]) if padded else None
    kernel = BiLevelRoutingAttention(heads=4, head_dim=8, region=16, topk=n_regions(length, 16))
    allowed = attend_mask(2, length, length, causal=causal, mask=mask)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
    out = kernel(q, k, v, mask=mask, causal=causal)
    rows = rows_with_keys(allowed).expand_as(out)
    torch.testing.assert_close(out[rows], expected[rows], atol=1e-5, rtol=0)


@pytest.mark.parametrize("lq", [1, 7, 30])
def test_covering_topk_equals_exact_attention_with_a_cache(lq):
    q, k, v = qkv(lq=lq, lk=70, hkv=2, dtype=torch.float32)
    kernel = BiLevelRoutingAttention(heads=4, head_dim=8, region=16, topk=5)
    allowed = attend_mask(2, lq, 70, causal=True)
    expected = F.scaled_dot_product_attention(q, repeat_kv(k, 4), repeat_kv(v, 4), attn_mask=allowed)
    torch.testing.assert_close(kernel(q, k, v, causal=True), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("routing", ["region", "token"])
def test_covering_topk_equals_exact_cross_attention(routing):
    q, k, v = qkv(lq=30, lk=70, dtype=torch.float32)
    mask = padding(2, 70, [70, 41])
    kernel = BiLevelRoutingAttention(heads=4, head_dim=8, region=16, topk=5, routing=routing, cross=True)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(kernel(q, k, v, mask=mask), expected, atol=1e-5, rtol=0)


# ---------------------------------------------------------------- routing-implied mask ---------


CASES = {
    "region": dict(lq=50, lk=50, causal=False, routing="region"),
    "region-cross": dict(lq=21, lk=50, causal=False, routing="region"),
    "token-causal": dict(lq=50, lk=50, causal=True, routing="token"),
    "token-cache": dict(lq=11, lk=50, causal=True, routing="token"),
    "token-bidirectional": dict(lq=50, lk=50, causal=False, routing="token"),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("padded", [False, True])
def test_equals_dense_attention_under_the_routed_mask(case, padded):
    lq, lk, causal, routing = (CASES[case][key] for key in ("lq", "lk", "causal", "routing"))
    q, k, v = qkv(h=4, hkv=2, lq=lq, lk=lk)
    mask = padding(2, lk, [lk - 13, lk]) if padded else None
    key_valid = None if mask is None else mask[:, 0, 0]
    cross = lq != lk
    query_mask = key_valid if routing == "region" and not cross else None
    routes = route(
        q, k, region=8, topk=3, causal=causal, routing=routing, key_mask=key_valid, query_mask=query_mask
    )
    kernel = BiLevelRoutingAttention(heads=4, head_dim=8, region=8, topk=3, routing=routing, cross=cross)
    allowed = attend_mask(2, lq, lk, causal=causal, mask=mask) & implied_mask(
        routes, token=routing == "token", b=2, lq=lq, lk=lk, region=8
    )
    expected = written_out(q, k, v, allowed)
    torch.testing.assert_close(kernel(q, k, v, mask=mask, causal=causal), expected, atol=1e-10, rtol=0)


def test_route_shapes_and_the_own_region_of_causal_tokens():
    q, k, _ = qkv(lq=50)
    region_routes = route(q, k, region=8, topk=3, routing="region")
    token_routes = route(q, k, region=8, topk=3, causal=True)
    assert region_routes.shape == (2, 7, 3)
    assert token_routes.shape == (2, 50, 3)
    own = torch.arange(50) // 8
    assert torch.equal(token_routes[..., 0], own.expand(2, 50))
    others = token_routes[..., 1:]
    assert torch.all((others < own[:, None]) | (others == -1))
    assert torch.all(others[:, :8] == -1)  # the first region has nothing before it


def test_general_mask_and_bias_are_gathered_at_the_routed_cells():
    q, k, v = qkv(h=4, hkv=4, lq=40)
    general = torch.rand(2, 4, 40, 40, generator=torch.Generator().manual_seed(3)) > 0.3
    slope = torch.tensor([0.5, -0.25, 0.1, 0.0], dtype=torch.float64)

    def bias(q_idx, k_idx):
        return slope.view(-1, *([1] * max(q_idx.dim(), k_idx.dim()))) * (k_idx - q_idx)

    kernel = BiLevelRoutingAttention(heads=4, head_dim=8, region=8, topk=2)
    routes = route(q, k, region=8, topk=2, key_mask=general.any(2).any(1))
    allowed = general & implied_mask(routes, token=False, b=2, lq=40, lk=40, region=8)
    grid = bias(torch.arange(40)[:, None], torch.arange(40)[None, :])  # (H, Lq, Lk)
    expected = written_out(q, k, v, allowed, bias=grid)
    torch.testing.assert_close(kernel(q, k, v, mask=general, bias=bias), expected, atol=1e-10, rtol=0)


def test_fully_masked_rows_give_zeros():
    q, k, v = qkv(lq=24)
    mask = padding(2, 24, [0, 24])
    out = BiLevelRoutingAttention(heads=4, head_dim=8, region=8, topk=2)(q, k, v, mask=mask)
    assert torch.equal(out[0], torch.zeros_like(out[0]))
    assert torch.isfinite(out).all()
    early = BiLevelRoutingAttention(heads=4, head_dim=8, region=8, topk=2)(*qkv(lq=10, lk=6), causal=True)
    assert torch.equal(early[:, :, :4], torch.zeros_like(early[:, :, :4]))  # positions -4..-1


# ---------------------------------------------------------------- leaks ---------------------------


@pytest.mark.parametrize("t", [20, 24])
@pytest.mark.parametrize("lce", [0, 3])
def test_causal_attention_leaks_nothing(t, lce):
    torch.manual_seed(0)
    kernel = BiLevelRoutingAttention(heads=4, head_dim=8, region=8, topk=3, lce=lce).double()
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
def test_padded_positions_do_not_reach_real_tokens(causal, lce):
    torch.manual_seed(0)
    kernel = BiLevelRoutingAttention(heads=4, head_dim=8, region=8, topk=2, lce=lce).double()
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
def test_gradcheck(routing, causal):
    q, k, v = qkv(b=1, h=2, hkv=1, lq=19, dh=4)
    mask = padding(1, 19, [17])
    kernel = BiLevelRoutingAttention(heads=2, head_dim=4, region=4, topk=2, routing=routing)
    inputs = [x.requires_grad_() for x in (q, k, v)]
    assert torch.autograd.gradcheck(lambda *x: kernel(*x, mask=mask, causal=causal), inputs, fast_mode=True)


def test_gradcheck_with_bias_and_dropout():
    q, k, v = qkv(b=1, h=2, hkv=2, lq=13, dh=4)
    slope = torch.tensor([0.3, -0.2], dtype=torch.float64)
    kernel = BiLevelRoutingAttention(heads=2, head_dim=4, region=4, topk=2, dropout=0.3).train()

    def attend(q, k, v, slope):
        torch.manual_seed(1)  # the same dropout mask on every call
        return kernel(q, k, v, causal=True, bias=lambda qi, ki: slope[:, None, None, None] * (ki - qi))

    inputs = [x.requires_grad_() for x in (q, k, v, slope)]
    assert torch.autograd.gradcheck(attend, inputs, fast_mode=True)


def test_backward_is_deterministic():
    q, k, v = qkv(lq=40, h=4, hkv=2, dtype=torch.float32)
    kernel = BiLevelRoutingAttention(heads=4, head_dim=8, region=8, topk=2)
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
def test_grouped_query_attention_equals_repeated_keys(causal):
    q, k, v = qkv(h=4, hkv=2, lq=37)
    kernel = BiLevelRoutingAttention(heads=4, head_dim=8, region=8, topk=2)
    grouped = kernel(q, k, v, causal=causal)
    repeated = kernel(q, repeat_kv(k, 4), repeat_kv(v, 4), causal=causal)
    torch.testing.assert_close(grouped, repeated, atol=1e-12, rtol=0)


@pytest.mark.parametrize("causal", [False, True])
def test_bfloat16_is_close_to_float32(causal):
    q, k, v = qkv(lq=48, dtype=torch.float32)
    kernel = BiLevelRoutingAttention(heads=4, head_dim=8, region=8, topk=6)  # covering: no routing ties
    full = kernel(q, k, v, causal=causal)
    half = kernel(*(x.bfloat16() for x in (q, k, v)), causal=causal)
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), full, atol=3e-2, rtol=3e-2)


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-6), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("causal", [False, True])
def test_the_two_cpu_paths_agree(monkeypatch, dtype, tol, causal):
    q, k, v = qkv(lq=45, dtype=dtype)
    mask = padding(2, 45, [45, 30])
    kernel = BiLevelRoutingAttention(heads=4, head_dim=8, region=8, topk=2)
    outs = []
    for threshold in (0, 1 << 30):  # tiles, then every score under the routed mask
        monkeypatch.setattr(bra_module, "DENSE_UP_TO", threshold)
        outs.append(kernel(q, k, v, mask=mask, causal=causal))
    assert outs[0].dtype == outs[1].dtype == dtype
    torch.testing.assert_close(outs[1].float(), outs[0].float(), atol=tol, rtol=0)


def test_dropout_only_while_training():
    q, k, v = qkv(lq=32)
    kernel = BiLevelRoutingAttention(heads=4, head_dim=8, region=8, topk=2, dropout=0.5)
    eval_out = kernel.eval()(q, k, v)
    torch.testing.assert_close(kernel.eval()(q, k, v), eval_out)
    assert not torch.allclose(kernel.train()(q, k, v), eval_out)


def test_local_context_parameters_live_under_the_kernel():
    ctx = BuildContext(d_model=32, heads=4, max_len=64)
    kernel = bra(ctx, region=8, topk=2, lce=5)
    mha = MultiHeadAttention(d_model=32, heads=4, kv_heads=4, head_dim=8, kernel=kernel)
    assert kernel.lce.weight.shape == (32, 1, 5)
    assert {"kernel.lce.weight", "kernel.lce.bias"} <= set(mha.state_dict())
    x = torch.randn(2, 20, 32)
    out = mha(x)
    out.sum().backward()
    assert out.shape == (2, 20, 32) and kernel.lce.weight.grad is not None
    without = bra(ctx, region=8, topk=2)
    q, k, v = qkv(lq=20, dtype=torch.float32)
    channels = v.transpose(-1, -2).reshape(2, 32, 20)
    conv = F.conv1d(channels, kernel.lce.weight, kernel.lce.bias, padding=2, groups=32)
    expected = without(q, k, v) + conv.view(2, 4, 8, 20).transpose(-1, -2)
    torch.testing.assert_close(kernel(q, k, v), expected, atol=1e-6, rtol=0)


def test_factory_reads_the_context():
    ctx = BuildContext(d_model=64, heads=8, kv_heads=2, dropout=0.1, max_len=256)
    kernel = bra(ctx, region=16, topk=3, routing="token")
    assert (kernel.heads, kernel.head_dim, kernel.region, kernel.topk) == (8, 8, 16, 3)
    assert kernel.scale == 8**-0.5 and kernel.dropout == 0.1 and kernel.routing == "token"
    assert bra.__doc__.splitlines()[0] and "Args:" in bra.__doc__


BAD = [
    (dict(region=0), "region"),
    (dict(topk=0), "topk"),
    (dict(topk=5, region=64), "topk"),  # 4 regions in max_len=256
    (dict(routing="global"), "routing"),
    (dict(lce=4), "lce"),
    (dict(lce=-3), "lce"),
    (dict(backend="triton"), "backend"),
    (dict(scale=0.0), "scale"),
]


@pytest.mark.parametrize("kwargs,name", BAD)
def test_bad_arguments_name_themselves(kwargs, name):
    with pytest.raises(ValueError, match=name):
        bra(BuildContext(d_model=64, heads=4, max_len=256), **kwargs)


def test_region_routing_refuses_causal_attention():
    with pytest.raises(ValueError, match="routing='region'.*future"):
        bra(BuildContext(d_model=64, heads=4, causal=True), routing="region")
    kernel = BiLevelRoutingAttention(heads=4, head_dim=8, routing="region")
    with pytest.raises(ValueError, match="routing='region'"):
        kernel(*qkv(lq=8), causal=True)


def test_decoder_cross_attention_routes_each_query_alone():
    ctx = BuildContext(d_model=32, heads=4, cross=True, decoder=True)
    kernel = bra(ctx, region=8, topk=2)
    assert kernel.routing == "token"
    q, k, v = qkv(lq=20, lk=40)
    changed = q.clone()
    changed[:, :, 12:] = torch.randn_like(changed[:, :, 12:]) * 10
    before, after = kernel(q, k, v), kernel(changed, k, v)
    torch.testing.assert_close(after[:, :, :12], before[:, :, :12], atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match="routing='region'.*decoder"):
        bra(ctx, routing="region")


def test_local_context_refuses_cross_attention():
    with pytest.raises(ValueError, match="lce"):
        bra(BuildContext(d_model=64, heads=4, cross=True), lce=3)


def test_flex_backend_on_cpu_is_a_clear_error():
    kernel = BiLevelRoutingAttention(heads=4, head_dim=8, backend="flex")
    with pytest.raises(RuntimeError, match="backend='flex'.*CUDA"):
        kernel(*qkv(lq=8))


def test_registered_as_attention_bra():
    class Recorder:
        def __init__(self):
            self.added = []

        def add(self, kind, name, factory):
            self.added.append((kind, name, factory))

    from plugformer.plugins import bra as module

    recorder = Recorder()
    module.plugformer_register(recorder)
    assert recorder.added == [("attention", "bra", bra)]


# ---------------------------------------------------------------- flex_attention -----------------


@pytest.mark.parametrize("case", CASES)
def test_flex_mask_mod_and_block_mask_match_the_tiles(case):
    lq, lk, causal, routing = (CASES[case][key] for key in ("lq", "lk", "causal", "routing"))
    q, k, v = qkv(h=4, hkv=2, lq=lq, lk=lk, dtype=torch.float32)
    mask = padding(2, lk, [lk - 13, lk])
    kernel = BiLevelRoutingAttention(heads=4, head_dim=8, region=8, topk=3, routing=routing, cross=lq != lk)
    key_valid = mask[:, 0, 0]
    routes = route(q, k, region=8, topk=3, causal=causal, routing=routing, key_mask=key_valid,
                   query_mask=key_valid if routing == "region" and lq == lk else None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = bra_flex.flex_bra(q, k, v, routes, token=routing == "token", region=8, causal=causal,
                                key_valid=key_valid, scale=8**-0.5, compile=False)
    expected = kernel(q, k, v, mask=mask, causal=causal)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    blocks = bra_flex.block_mask(routes, token=routing == "token", lq=lq, lk=lk, region=8, causal=causal,
                                 key_valid=key_valid)
    allowed = attend_mask(2, lq, lk, causal=causal, mask=mask) & implied_mask(
        routes, token=routing == "token", b=2, lq=lq, lk=lk, region=8
    )  # (B, 1, Lq, Lk)
    cells_blocks = blocks.to_dense()[:, 0]  # (B, nq, nk): blocks the compiled kernel visits
    needed = F.pad(allowed[:, 0], (0, -lk % 8, 0, -lq % 8)).view(2, n_regions(lq, 8), 8, -1, 8).any(4).any(2)
    assert torch.all(cells_blocks.bool() | ~needed)


def test_flex_gathers_a_general_mask_and_a_bias():
    q, k, v = qkv(h=4, hkv=2, lq=40, dtype=torch.float32)
    general = torch.rand(2, 4, 40, 40, generator=torch.Generator().manual_seed(3)) > 0.3
    slope = torch.tensor([0.5, -0.25, 0.1, 0.0])

    def bias(q_idx, k_idx):
        return slope.view(-1, *([1] * max(q_idx.dim(), k_idx.dim()))) * (k_idx - q_idx)

    kernel = BiLevelRoutingAttention(heads=4, head_dim=8, region=8, topk=2)
    key_valid = general.any(2).any(1)
    routes = route(q, k, region=8, topk=2, key_mask=key_valid, query_mask=key_valid)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = bra_flex.flex_bra(q, k, v, routes, token=False, region=8, causal=False, key_valid=key_valid,
                                mask=general, bias=bias, scale=8**-0.5, compile=False)
    torch.testing.assert_close(out, kernel(q, k, v, mask=general, bias=bias), atol=1e-5, rtol=0)


@pytest.mark.parametrize("causal", [False, True])
def test_inputs_laid_out_as_multi_head_attention_makes_them(causal):
    q, k, v = qkv(h=4, hkv=2, lq=45)
    strided = [x.transpose(1, 2).contiguous().transpose(1, 2) for x in (q, k, v)]  # (B, L, H, Dh) storage
    kernel = BiLevelRoutingAttention(heads=4, head_dim=8, region=8, topk=2)
    expected = kernel(q, k, v, causal=causal)
    torch.testing.assert_close(kernel(*strided, causal=causal), expected, atol=1e-12, rtol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("causal", [False, True])
def test_flex_backend_on_gpu_matches_the_tiles(causal):
    q, k, v = (x.cuda() for x in qkv(h=8, hkv=2, lq=1000, dh=64, dtype=torch.float32))
    mask = padding(2, 1000, [1000, 800]).cuda()
    outs = {}
    for backend in ("torch", "flex"):
        kernel = BiLevelRoutingAttention(heads=8, head_dim=64, region=64, topk=4, backend=backend)
        outs[backend] = kernel(q, k, v, mask=mask, causal=causal)
    torch.testing.assert_close(outs["flex"], outs["torch"], atol=2e-3, rtol=0)


# ---------------------------------------------------------------- plots ----------------------------


def test_record_and_plot_routes(tmp_path):
    pytest.importorskip("matplotlib")
    from plugformer.plugins.routes_plot import plot_routes, record_routes

    layers = torch.nn.ModuleList(
        MultiHeadAttention(d_model=32, heads=4, kv_heads=4, head_dim=8,
                           kernel=BiLevelRoutingAttention(heads=4, head_dim=8, region=8, topk=2, routing=r))
        for r in ("region", "token")
    )
    x = torch.randn(2, 50, 32)
    with record_routes(layers) as routes:
        layers[0](x)
        layers[1](x, causal=True)
    assert set(routes) == {"0.kernel", "1.kernel"}
    assert routes["0.kernel"].shape == (7, 7)
    torch.testing.assert_close(routes["0.kernel"].sum(1), torch.full((7,), 2.0))
    path = plot_routes(routes, tmp_path / "routes.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not layers[0].kernel.record_routes
