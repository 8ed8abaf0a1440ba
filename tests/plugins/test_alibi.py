"""``alibi``: slopes and bias against the paper's definition, and in models."""

from __future__ import annotations

import math

import pytest
import torch

import plugformer
from plugformer import SpecError, build, build_part
from plugformer.plugins import alibi as alibi_plugin
from plugformer.plugins.alibi import ALiBiPositions, alibi_slopes
from plugformer.plugins.dense import DenseAttention


@pytest.fixture(autouse=True, scope="module")
def registered():
    """Registers the plugin while it is not a built-in yet (see BUILTIN_PLUGINS)."""
    loaded = {p.name for p in plugformer.registry.plugins}
    added = [
        plugformer.registry.register_plugin(m) for m in (alibi_plugin,) if m.__name__ not in loaded
    ]
    yield
    for name in added:
        plugformer.registry.unregister_plugin(name)


def paper_slopes(n: int) -> list[float]:
    """``get_slopes`` of the ALiBi paper's code (ofirpress/attention_with_linear_biases)."""

    def power_of_2(n: int) -> list[float]:
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    if math.log2(n).is_integer():
        return power_of_2(n)
    closest = 2 ** math.floor(math.log2(n))
    return power_of_2(closest) + paper_slopes(2 * closest)[0::2][: n - closest]


@pytest.mark.parametrize("heads", [1, 2, 3, 4, 5, 6, 8, 12, 16, 24, 32])
def test_slopes_follow_the_paper(heads):
    assert alibi_slopes(heads) == pytest.approx(paper_slopes(heads), rel=1e-12)


def test_eight_heads_give_halving_slopes():
    assert alibi_slopes(8) == pytest.approx([2.0**-i for i in range(1, 9)])


def test_bias_is_minus_slope_times_distance():
    pe = ALiBiPositions(heads=6)
    q_pos, k_pos = torch.arange(3, 10)[:, None], torch.arange(12)[None, :]
    bias = pe.score_bias(q_pos, k_pos)
    assert bias.shape == (6, 7, 12)
    for h, slope in enumerate(paper_slopes(6)):
        for i in range(7):
            for j in range(12):
                assert bias[h, i, j].item() == pytest.approx(-slope * abs((i + 3) - j), rel=1e-6)


def test_causal_attention_equals_the_papers_row_shifted_form():
    """The paper's code adds slope * j (no query term): under causal masking, softmax makes
    that the same attention as -slope * (i - j)."""
    torch.manual_seed(0)
    pe = ALiBiPositions(heads=4)
    q, k, v = torch.randn(2, 4, 9, 8), torch.randn(2, 4, 9, 8), torch.randn(2, 4, 9, 8)
    ours = DenseAttention()(q, k, v, causal=True, score_bias=pe.score_bias)
    slopes = torch.tensor(paper_slopes(4))[:, None, None]
    paper = DenseAttention()(q, k, v, causal=True, score_bias=lambda qi, ki: slopes * ki.float())
    torch.testing.assert_close(ours, paper, atol=1e-5, rtol=1e-5)


def test_factory_takes_heads_from_the_context():
    pe = build_part("positional", "alibi", d_model=48, heads=6)
    assert pe.slopes.tolist() == pytest.approx(paper_slopes(6))
    assert not pe.state_dict()
    with pytest.raises(SpecError, match="max_bias"):
        build_part("positional", "alibi(max_bias=0)", d_model=48, heads=6)


def test_describe_shows_uses_bias():
    described = plugformer.registry.describe("positional", "alibi")
    assert described.capabilities["uses_bias"] is True
    assert described.capabilities["uses_rotate"] is False


# -- in models ------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["gpt_tiny(pe=alibi, d_model=48, heads=6)", "transformer_tiny(pe=alibi)"])
def test_dense_and_fused_agree_and_weights_carry_over(spec):
    torch.manual_seed(1)
    dense = build(spec.replace("pe=alibi", "pe=alibi, attn=dense")).eval()
    fused = build(spec.replace("pe=alibi", "pe=alibi, attn=fused")).eval()
    fused.load_state_dict(dense.state_dict())
    ids = torch.randint(0, 256, (2, 10))
    args = (ids,) if dense.kind == "lm" else (ids, ids[:, :7])
    torch.testing.assert_close(fused(*args), dense(*args), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("attn", ["dense", "fused"])
def test_cached_decoding_matches_the_full_sequence(attn, cached_logits):
    torch.manual_seed(2)
    model = build(f"gpt_tiny(pe=alibi, attn={attn})").eval()
    ids = torch.randint(0, 256, (2, 12))
    torch.testing.assert_close(cached_logits(model, ids, prefix=4), model(ids), atol=1e-5, rtol=0)


def test_encoder_decoder_cached_decoding_matches(cached_logits):
    torch.manual_seed(3)
    model = build("transformer_tiny(pe=alibi)").eval()
    src, tgt = torch.randint(0, 256, (2, 9)), torch.randint(0, 256, (2, 6))
    memory = model.encode(src)
    torch.testing.assert_close(cached_logits(model, tgt, memory=memory), model.decode(tgt, memory),
                               atol=1e-5, rtol=0)


def test_learns_what_a_model_without_it_cannot(learned_losses):
    """Predicting the previous token needs positions; the twin without ALiBi (same weights)
    only averages the past."""
    models = []
    for pe in ("alibi", "none"):
        torch.manual_seed(4)
        models.append(build(f"gpt_tiny(pe={pe}, layers=1, vocab=64)"))
    working, broken = learned_losses(*models, "lookback", 60, vocab=64)
    assert working < broken - 0.5, (working, broken)
