"""``local``: against dense attention under the band mask, blocked and not, with a cache."""

from __future__ import annotations

import pytest
import torch

import plugformer
from plugformer import SpecError, build, build_part
from plugformer.plugins import alibi as alibi_plugin
from plugformer.plugins import local as local_plugin
from plugformer.plugins import rope as rope_plugin
from plugformer.plugins.alibi import ALiBiPositions
from plugformer.plugins.dense import DenseAttention
from plugformer.plugins.local import LocalAttention


@pytest.fixture(autouse=True, scope="module")
def registered():
    """Registers the plugins while they are not built-ins yet (see BUILTIN_PLUGINS)."""
    loaded = {p.name for p in plugformer.registry.plugins}
    added = [
        plugformer.registry.register_plugin(m)
        for m in (local_plugin, rope_plugin, alibi_plugin)
        if m.__name__ not in loaded
    ]
    yield
    for name in reversed(added):
        plugformer.registry.unregister_plugin(name)


def brute_band(lq: int, lk: int, window: int, causal: bool) -> torch.Tensor:
    """The window by definition, one (query, key) pair at a time."""
    allowed = torch.zeros(lq, lk, dtype=torch.bool)
    for i in range(lq):
        p = lk - lq + i
        for j in range(lk):
            allowed[i, j] = 0 <= p - j < window if causal else abs(p - j) < window
    return allowed


CASES = [  # (lq, lk, window, block)
    (16, 16, 1, None), (16, 16, 4, None), (16, 16, 4, 4), (17, 17, 3, 5), (23, 23, 6, 4),
    (7, 23, 5, 2), (1, 23, 4, None), (1, 23, 40, None), (20, 20, 30, 8), (33, 33, 2, 1),
]


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("lq, lk, window, block", CASES)
def test_equals_dense_under_the_band_mask(causal, lq, lk, window, block):
    torch.manual_seed(lq * 100 + lk + window)
    q, k, v = torch.randn(2, 4, lq, 8), torch.randn(2, 2, lk, 8), torch.randn(2, 2, lk, 8)
    band = brute_band(lq, lk, window, causal)
    got = LocalAttention(window=window, block=block)(q, k, v, causal=causal)
    expected = DenseAttention()(q, k, v, mask=band)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mask_shape", ["padding", "full", "per_head"])
@pytest.mark.parametrize("block", [None, 3])
def test_masks_and_bias_are_honoured(mask_shape, block):
    torch.manual_seed(1)
    lq = lk = 13
    q, k, v = torch.randn(2, 4, lq, 8), torch.randn(2, 4, lk, 8), torch.randn(2, 4, lk, 8)
    shape = {"padding": (2, 1, 1, lk), "full": (lq, lk), "per_head": (2, 4, lq, lk)}[mask_shape]
    mask = torch.rand(shape) > 0.3
    pe = ALiBiPositions(heads=4)
    got = LocalAttention(window=4, block=block)(q, k, v, mask=mask, causal=True, score_bias=pe.score_bias)
    expected = DenseAttention()(q, k, v, mask=mask & brute_band(lq, lk, 4, True), score_bias=pe.score_bias)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_window_covering_everything_is_full_attention():
    torch.manual_seed(2)
    q, k, v = torch.randn(1, 2, 10, 8), torch.randn(1, 2, 10, 8), torch.randn(1, 2, 10, 8)
    for causal in (False, True):
        got = LocalAttention(window=10, block=3)(q, k, v, causal=causal)
        torch.testing.assert_close(got, DenseAttention()(q, k, v, causal=causal), atol=1e-5, rtol=1e-5)


def test_fully_masked_rows_give_zeros():
    q, k, v = torch.randn(1, 1, 6, 4), torch.randn(1, 1, 6, 4), torch.randn(1, 1, 6, 4)
    mask = torch.ones(1, 1, 6, 6, dtype=torch.bool)
    mask[..., 2, :] = False
    out = LocalAttention(window=2, block=2)(q, k, v, mask=mask)
    assert torch.isfinite(out).all() and torch.equal(out[0, 0, 2], torch.zeros(4))


def test_gradients_match_dense():
    torch.manual_seed(3)
    inputs = [torch.randn(2, 2, 19, 8, requires_grad=True) for _ in range(3)]
    LocalAttention(window=5, block=4)(*inputs, causal=True).pow(2).sum().backward()
    local_grads = [t.grad.clone() for t in inputs]
    for t in inputs:
        t.grad = None
    DenseAttention()(*inputs, mask=brute_band(19, 19, 5, True)).pow(2).sum().backward()
    for got, expected in zip(local_grads, (t.grad for t in inputs)):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_blocks_reach_only_their_window():
    """Memory grows as L * (block + window), not L^2."""
    kernel = LocalAttention(window=16)
    q_idx, k_idx = kernel.layout(4096, 4096, causal=True, device="cpu")
    assert q_idx.shape == (64, 64, 1) and k_idx.shape == (64, 1, 64 + 15)
    _, k_idx = kernel.layout(4096, 4096, causal=False, device="cpu")
    assert k_idx.shape[-1] == 64 + 2 * 15
    _, k_idx = kernel.layout(1, 4096, causal=True, device="cpu")  # one decoding step
    assert k_idx.flatten().tolist() == list(range(4096 - 16, 4096))


def test_factory_checks_and_refuses_cross_attention():
    assert build_part("attention", "local(window=8)", d_model=16, heads=2).window == 8
    with pytest.raises(SpecError, match="window"):
        build_part("attention", "local(window=0)", d_model=16, heads=2)
    with pytest.raises(SpecError, match="cross"):
        build("transformer_tiny(attn=local)")
    model = build("transformer_tiny(attn=local(window=4), cross_attn=fused)")
    assert isinstance(model.stack.encoder.layers[0].self_attn.kernel, LocalAttention)


def test_describe_shows_capabilities():
    capabilities = plugformer.registry.describe("attention", "local").capabilities
    assert capabilities == {
        "supports_bias": True, "supports_cache": True, "supports_causal": True, "supports_mask": True
    }


# -- in models ------------------------------------------------------------------------------


@pytest.mark.parametrize("pe", ["rope", "alibi", "learned"])
def test_cached_decoding_matches_the_full_sequence(pe, cached_logits):
    torch.manual_seed(4)
    model = build(f"gpt_tiny(pe={pe}, attn=local(window=3, block=2), kv_heads=2)").eval()
    ids = torch.randint(0, 256, (2, 11))
    torch.testing.assert_close(cached_logits(model, ids, prefix=5), model(ids), atol=1e-5, rtol=0)


def test_model_equals_dense_model_when_the_window_covers_the_sequence():
    torch.manual_seed(5)
    local = build("transformer_tiny(pe=alibi, attn=local(window=16, block=4), cross_attn=dense)").eval()
    dense = build("transformer_tiny(pe=alibi, attn=dense)").eval()
    dense.load_state_dict(local.state_dict())
    src, tgt = torch.randint(0, 256, (2, 12)), torch.randint(0, 256, (2, 9))
    torch.testing.assert_close(local(src, tgt), dense(src, tgt), atol=1e-5, rtol=1e-5)


def test_learns_what_its_zeroed_twin_cannot(learned_losses, zeroed):
    """Predicting the previous token (inside the window) needs the kernel; the twin whose
    kernel outputs zeros cannot."""
    models = []
    for _ in range(2):
        torch.manual_seed(6)
        models.append(build("gpt_tiny(pe=rope, attn=local(window=4), layers=1, vocab=64)"))
    zeroed([layer.self_attn.kernel for layer in models[1].decoder.layers])
    working, broken = learned_losses(*models, "lookback", 60, vocab=64)
    assert working < broken - 1.0, (working, broken)
