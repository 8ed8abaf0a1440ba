"""``llama_tiny`` and ``t5_tiny``: the recipe each preset promises, and that they run."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import plugformer
from plugformer import build, parse, resolve
from plugformer.plugins import gated_ffn, norms, presets_modern, rope, t5_bias
from plugformer.plugins.fused import FusedAttention
from plugformer.plugins.gated_ffn import GatedFeedForward
from plugformer.plugins.norms import RMSNorm
from plugformer.plugins.rope import RotaryPositions
from plugformer.plugins.t5_bias import T5RelativeBias


@pytest.fixture(autouse=True, scope="module")
def registered():
    """Registers the plugins while they are not built-ins yet (see BUILTIN_PLUGINS)."""
    loaded = {p.name for p in plugformer.registry.plugins}
    added = [
        plugformer.registry.register_plugin(m)
        for m in (rope, t5_bias, norms, gated_ffn, presets_modern)
        if m.__name__ not in loaded
    ]
    yield
    for name in reversed(added):
        plugformer.registry.unregister_plugin(name)


def linears(model: nn.Module) -> list[nn.Linear]:
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


def test_llama_tiny_recipe():
    model = build("llama_tiny")
    assert model.kind == "lm"
    assert isinstance(model.decoder.pe, RotaryPositions)
    assert isinstance(model.decoder.norm, RMSNorm)
    for layer in model.decoder.layers:
        assert type(layer).__name__ == "PreLNBlock"
        assert (layer.self_attn.heads, layer.self_attn.kv_heads) == (4, 2)
        assert isinstance(layer.ffn, GatedFeedForward)
        assert isinstance(layer.self_attn_norm, RMSNorm) and isinstance(layer.ffn_norm, RMSNorm)
    assert all(linear.bias is None for linear in linears(model))
    assert model.lm_head.weight is not model.embed.weight


def test_t5_tiny_recipe():
    model = build("t5_tiny")
    assert model.kind == "encdec"
    encoder, decoder = model.stack.encoder, model.stack.decoder
    assert isinstance(encoder.pe, T5RelativeBias) and encoder.pe.bidirectional
    assert isinstance(decoder.pe, T5RelativeBias) and not decoder.pe.bidirectional
    assert not encoder.pe.uses_embed
    for layer in [*encoder.layers, *decoder.layers]:
        assert isinstance(layer.self_attn.kernel, FusedAttention) and layer.self_attn.kernel.scale == 1.0
        assert isinstance(layer.ffn_norm, RMSNorm)
    assert all(linear.bias is None for linear in linears(model))


@pytest.mark.parametrize("name", ["llama_tiny", "t5_tiny"])
def test_canonical_spec_round_trips_and_describe(name):
    spec = resolve(name)
    assert spec.name == name
    assert parse(str(spec)) == spec
    described = plugformer.registry.describe("model", name)
    assert described.summary and "preset" in described.doc


def test_llama_tiny_cached_decoding_matches(cached_logits):
    torch.manual_seed(0)
    model = build("llama_tiny").eval()
    ids = torch.randint(0, 256, (2, 10))
    torch.testing.assert_close(cached_logits(model, ids), model(ids), atol=1e-5, rtol=0)


def test_t5_tiny_runs_and_swaps_kernels():
    torch.manual_seed(1)
    model = build("t5_tiny").eval()
    dense = build("t5_tiny(attn=dense(scale=1.0))").eval()
    dense.load_state_dict(model.state_dict())
    src, tgt = torch.randint(0, 256, (2, 9)), torch.randint(0, 256, (2, 7))
    logits = model(src, tgt)
    assert logits.shape == (2, 7, 256) and torch.isfinite(logits).all()
    torch.testing.assert_close(dense(src, tgt), logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["llama_tiny", "t5_tiny"])
def test_learns_what_its_twin_without_attention_cannot(name, learned_losses, zeroed):
    """Predicting the previous token needs the preset's attention; the twin whose kernels
    output zeros cannot."""
    models = []
    for _ in range(2):
        torch.manual_seed(2)
        models.append(build(name, vocab=64, layers=1))
    zeroed([module.kernel for module in models[1].modules() if hasattr(module, "kernel")])
    encdec = models[0].kind == "encdec"
    working, broken = learned_losses(*models, "lookback", 60, vocab=64, encdec=encdec)
    assert working < broken - 0.5, (working, broken)
