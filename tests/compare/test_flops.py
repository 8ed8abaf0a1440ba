"""FLOP counting (compare/flops.py): hand counts, and dense == fused once the CPU SDPA ops have
formulas."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import plugformer
from plugformer.compare.flops import count_flops
from plugformer.registry.builder import build_part

B, S, T, D, H, FF, V = 3, 10, 7, 32, 4, 48, 20


def _hand_count_encdec() -> int:
    """Multiply-adds x 2 of a 1+1-layer encoder-decoder, from the shapes alone."""
    linear = lambda rows, d_in, d_out: 2 * B * rows * d_in * d_out  # noqa: E731
    attention = lambda lq, lk: 2 * 2 * B * lq * lk * D  # QK^T and PV over all heads  # noqa: E731
    encoder = 4 * linear(S, D, D) + attention(S, S) + linear(S, D, FF) + linear(S, FF, D)
    self_attn = 4 * linear(T, D, D) + attention(T, T)
    cross_attn = 2 * linear(T, D, D) + 2 * linear(S, D, D) + attention(T, S)
    decoder = self_attn + cross_attn + linear(T, D, FF) + linear(T, FF, D)
    return encoder + decoder + linear(T, D, V)


def _model(attn: str) -> torch.nn.Module:
    torch.manual_seed(0)
    spec = f"transformer_tiny(d_model={D}, heads={H}, layers=1, ffn=relu(d_ff={FF}), attn={attn})"
    return plugformer.build(spec, vocab=V, max_len=16)


def _run(model):
    src = torch.randint(3, V, (B, S), generator=torch.Generator().manual_seed(1))
    tgt = torch.randint(3, V, (B, T), generator=torch.Generator().manual_seed(2))
    return lambda m: m(src, tgt)


def test_one_layer_model_matches_the_hand_count():
    """Exact: a counter that dropped cross-attention (2 * 2*B*T*S*D of attention alone) or the
    LM head (2*B*T*D*V) is off by far more than nothing."""
    model = _model("dense")
    counted = count_flops(model, _run(model))
    assert counted == _hand_count_encdec()
    # every product has two products in its backward (input and weight / both operands)
    assert count_flops(model, _run(model), backward=True) == 3 * counted


@pytest.mark.parametrize("attn", ["dense", "fused"])
@pytest.mark.parametrize("layers", [1, 3])
def test_decoder_only_model_matches_the_hand_count(attn, layers):
    """gpt-style lm: per layer q/k/v/out projections, QK^T and PV, the feed-forward; then the
    (tied) LM head. Causal attention counts as full (see compare/flops.py)."""
    torch.manual_seed(0)
    model = plugformer.build(
        f"gpt_tiny(d_model={D}, heads={H}, layers={layers}, ffn=gelu(d_ff={FF}), attn={attn})",
        vocab=V, max_len=16,
    )
    ids = torch.randint(0, V, (B, S), generator=torch.Generator().manual_seed(3))
    linear = lambda rows, d_in, d_out: 2 * B * rows * d_in * d_out  # noqa: E731
    layer = 4 * linear(S, D, D) + 2 * 2 * B * S * S * D + linear(S, D, FF) + linear(S, FF, D)
    assert count_flops(model, lambda m: m(ids)) == layers * layer + linear(S, D, V)


def test_dense_and_fused_report_the_same_flops():
    dense, fused = _model("dense"), _model("fused")
    for backward in (False, True):
        assert count_flops(fused, _run(fused), backward=backward) == count_flops(
            dense, _run(dense), backward=backward)


@pytest.mark.parametrize("causal", [False, True])
def test_fused_kernel_alone_counts_qk_and_pv(causal):
    q, k, v = (torch.randn(2, H, 9, 8, requires_grad=True) for _ in range(3))
    expected = 2 * 2 * 2 * H * 9 * 9 * 8
    counts = {}
    for name in ("dense", "fused"):
        kernel = build_part("attention", name, d_model=H * 8, heads=H)
        counts[name] = (count_flops(kernel, lambda m: m(q, k, v, causal=causal)),
                        count_flops(kernel, lambda m: m(q, k, v, causal=causal), backward=True))
    assert counts["fused"] == counts["dense"] == (expected, 3 * expected)


def test_raw_sdpa_is_counted_on_cpu():
    q = torch.randn(1, 2, 16, 8)
    with torch.utils.flop_counter.FlopCounterMode(display=False) as counter:
        F.scaled_dot_product_attention(q, q, q)
    assert counter.get_total_flops() == 2 * 2 * 1 * 2 * 16 * 16 * 8
