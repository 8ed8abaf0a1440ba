"""``t5_bias``: buckets against T5's ``_relative_position_bucket``, the table, and in models."""

from __future__ import annotations

import math

import pytest
import torch

import plugformer
from plugformer import SpecError, build, build_part
from plugformer.plugins import t5_bias as t5_plugin
from plugformer.plugins.t5_bias import T5RelativeBias, relative_position_bucket


@pytest.fixture(autouse=True, scope="module")
def registered():
    """Registers the plugin while it is not a built-in yet (see BUILTIN_PLUGINS)."""
    loaded = {p.name for p in plugformer.registry.plugins}
    added = [plugformer.registry.register_plugin(m) for m in (t5_plugin,) if m.__name__ not in loaded]
    yield
    for name in added:
        plugformer.registry.unregister_plugin(name)


def t5_bucket(relative_position: int, bidirectional: bool = True, num_buckets: int = 32,
              max_distance: int = 128) -> int:
    """Mesh TensorFlow's ``_relative_position_bucket`` (used by T5), one position at a time."""
    ret = 0
    n = -relative_position
    if bidirectional:
        num_buckets //= 2
        ret += int(n < 0) * num_buckets
        n = abs(n)
    else:
        n = max(n, 0)
    max_exact = num_buckets // 2
    is_small = n < max_exact
    val_if_large = max_exact + int(
        math.log(n / max_exact) / math.log(max_distance / max_exact) * (num_buckets - max_exact)
    ) if n else 0
    val_if_large = min(val_if_large, num_buckets - 1)
    return ret + (n if is_small else val_if_large)


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("num_buckets, max_distance", [(32, 128), (16, 64), (64, 256), (8, 20)])
def test_buckets_match_t5(bidirectional, num_buckets, max_distance):
    relative = torch.arange(-600, 601)
    got = relative_position_bucket(
        relative, bidirectional=bidirectional, num_buckets=num_buckets, max_distance=max_distance
    )
    expected = [t5_bucket(int(r), bidirectional, num_buckets, max_distance) for r in relative]
    assert got.tolist() == expected


def test_bucket_ranges():
    relative = torch.arange(-300, 301)
    both = relative_position_bucket(relative, bidirectional=True)
    past = relative_position_bucket(relative, bidirectional=False)
    assert set(both.tolist()) == set(range(32)) - {16}  # 16 would be "later by 0"
    assert set(past.tolist()) == set(range(32))
    assert (past[relative >= 0] == 0).all()  # later keys (masked in decoders) share bucket 0


def test_score_bias_reads_the_table_per_head():
    torch.manual_seed(0)
    pe = T5RelativeBias(heads=3, bidirectional=True)
    q_pos, k_pos = torch.arange(5)[:, None], torch.arange(200)[None, :]
    bias = pe.score_bias(q_pos, k_pos)
    assert bias.shape == (3, 5, 200)
    for h in range(3):
        for i in range(5):
            for j in (0, 3, 40, 199):
                assert bias[h, i, j] == pe.weight[t5_bucket(j - i), h]


def test_encoder_is_bidirectional_decoder_unidirectional_and_one_table_per_stack():
    model = build("transformer_tiny(pe=t5_bias, layers=3)")
    assert model.stack.encoder.pe.bidirectional and not model.stack.decoder.pe.bidirectional
    tables = [name for name in model.state_dict() if ".pe." in name]
    assert tables == ["stack.encoder.pe.weight", "stack.decoder.pe.weight"]
    assert model.stack.encoder.pe.weight.shape == (32, 4)


def test_every_layer_reads_the_shared_table():
    torch.manual_seed(1)
    model = build("gpt_tiny(pe=t5_bias, layers=3)")
    calls = []
    model.decoder.pe.score_bias = lambda q, k, f=model.decoder.pe.score_bias: calls.append(1) or f(q, k)
    model(torch.randint(0, 256, (1, 6))).sum().backward()
    assert len(calls) == 3
    assert model.decoder.pe.weight.grad is not None and model.decoder.pe.weight.grad.abs().sum() > 0


def test_factory_checks_buckets():
    pe = build_part("positional", "t5_bias(num_buckets=16, max_distance=64)", d_model=32, heads=2)
    assert pe.weight.shape == (16, 2) and pe.bidirectional
    assert not build_part("positional", "t5_bias", d_model=32, heads=2, causal=True).bidirectional
    with pytest.raises(SpecError, match="num_buckets"):
        build_part("positional", "t5_bias(num_buckets=4)", d_model=32, heads=2)
    with pytest.raises(SpecError, match="max_distance"):
        build_part("positional", "t5_bias(max_distance=8)", d_model=32, heads=2)


def test_describe_shows_uses_bias():
    described = plugformer.registry.describe("positional", "t5_bias")
    assert described.capabilities["uses_bias"] is True
    assert {a.name: a.default for a in described.args} == {"num_buckets": 32, "max_distance": 128}


# -- in models ------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", ["none", "1.0"])
def test_dense_and_fused_agree_and_weights_carry_over(scale):
    torch.manual_seed(2)
    dense = build(f"transformer_tiny(pe=t5_bias, attn=dense(scale={scale}))").eval()
    fused = build(f"transformer_tiny(pe=t5_bias, attn=fused(scale={scale}))").eval()
    fused.load_state_dict(dense.state_dict())
    src, tgt = torch.randint(0, 256, (2, 10)), torch.randint(0, 256, (2, 7))
    torch.testing.assert_close(fused(src, tgt), dense(src, tgt), atol=1e-5, rtol=1e-5)


def test_encoder_decoder_cached_decoding_matches(cached_logits):
    torch.manual_seed(3)
    model = build("transformer_tiny(pe=t5_bias, block=pre_ln)").eval()
    src, tgt = torch.randint(0, 256, (2, 9)), torch.randint(0, 256, (2, 7))
    memory = model.encode(src)
    torch.testing.assert_close(cached_logits(model, tgt, prefix=3, memory=memory),
                               model.decode(tgt, memory), atol=1e-5, rtol=0)


def test_lm_cached_decoding_matches(cached_logits):
    torch.manual_seed(4)
    model = build("gpt_tiny(pe=t5_bias)").eval()
    ids = torch.randint(0, 256, (2, 10))
    torch.testing.assert_close(cached_logits(model, ids), model(ids), atol=1e-5, rtol=0)


def test_learns_what_a_model_without_it_cannot(learned_losses):
    """Predicting the previous token needs positions; the twin without the T5 bias only
    averages the past (and cross-attends to an encoder that cannot see order). The bias table
    itself learns."""
    models = []
    for pe in ("t5_bias", "none"):
        torch.manual_seed(5)
        models.append(build(f"transformer_tiny(pe={pe}, layers=1, vocab=64)"))
    table = models[0].stack.encoder.pe.weight.detach().clone()
    working, broken = learned_losses(*models, "lookback", 60, vocab=64, encdec=True)
    assert working < broken - 0.5, (working, broken)
    assert not torch.equal(models[0].stack.encoder.pe.weight, table)
