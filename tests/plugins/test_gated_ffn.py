"""``swiglu`` and ``geglu``: against down(act(x W_gate) * x W_up), and LLaMA's hidden width."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import plugformer
from plugformer import SpecError, build, build_part
from plugformer.plugins import gated_ffn as gated_plugin
from plugformer.plugins.gated_ffn import GatedFeedForward, llama_hidden_dim


@pytest.fixture(autouse=True, scope="module")
def registered():
    """Registers the plugin while it is not a built-in yet (see BUILTIN_PLUGINS)."""
    loaded = {p.name for p in plugformer.registry.plugins}
    added = [
        plugformer.registry.register_plugin(m) for m in (gated_plugin,) if m.__name__ not in loaded
    ]
    yield
    for name in added:
        plugformer.registry.unregister_plugin(name)


@pytest.mark.parametrize("name, activation", [("swiglu", F.silu), ("geglu", F.gelu)])
@pytest.mark.parametrize("bias", [False, True])
def test_matches_the_formula(name, activation, bias):
    torch.manual_seed(0)
    ffn = build_part("feedforward", f"{name}(d_ff=24, bias={str(bias).lower()})", d_model=16, heads=2)
    x = torch.randn(2, 5, 16)
    gate = F.linear(x, ffn.gate_proj.weight, ffn.gate_proj.bias)
    up = F.linear(x, ffn.up_proj.weight, ffn.up_proj.bias)
    expected = F.linear(activation(gate) * up, ffn.down_proj.weight, ffn.down_proj.bias)
    torch.testing.assert_close(ffn(x), expected)


def test_submodule_names_and_no_biases_by_default():
    ffn = build_part("feedforward", "swiglu", d_model=16, heads=2)
    assert isinstance(ffn, GatedFeedForward)
    names = [name for name, _ in ffn.named_parameters()]
    assert names == ["gate_proj.weight", "up_proj.weight", "down_proj.weight"]


@pytest.mark.parametrize("d_model, multiple_of", [(64, 256), (64, 32), (96, 1), (100, 7), (4096, 256)])
def test_default_width_is_llamas_rule(d_model, multiple_of):
    expected = multiple_of * math.ceil(int(8 * d_model / 3) / multiple_of)
    assert llama_hidden_dim(d_model, multiple_of) == expected
    if d_model <= 128:
        ffn = build_part("feedforward", f"swiglu(multiple_of={multiple_of})", d_model=d_model, heads=1)
        assert ffn.gate_proj.out_features == ffn.up_proj.out_features == expected


def test_llama_7b_width():
    assert llama_hidden_dim(4096, 256) == 11008  # LLaMA-7B's intermediate size


def test_parameter_count_is_close_to_a_4x_plain_ffn():
    gated = build_part("feedforward", "swiglu(multiple_of=1)", d_model=96, heads=1)
    plain = 2 * 96 * 4 * 96
    assert abs(sum(p.numel() for p in gated.parameters()) - plain) / plain < 0.01


def test_factory_checks_arguments():
    with pytest.raises(SpecError, match="multiple_of"):
        build_part("feedforward", "swiglu(multiple_of=0)", d_model=16, heads=2)
    with pytest.raises(SpecError, match="d_ff"):
        build_part("feedforward", "geglu(d_ff=0)", d_model=16, heads=2)


def test_in_a_model_learns_what_its_zeroed_twin_cannot_and_describe(learned_losses, zeroed):
    """A random table of (previous, current) token needs the feed-forward's interaction; the
    twin whose FFN outputs zeros reaches a clearly higher loss."""
    torch.manual_seed(1)
    model = build("gpt_tiny(ffn=swiglu(multiple_of=32), layers=1)")
    assert model.decoder.layers[0].ffn.gate_proj.out_features == 192
    models = []
    for _ in range(2):
        torch.manual_seed(1)
        models.append(build("gpt_tiny(ffn=swiglu(multiple_of=32), layers=1, pe=rope, vocab=16)"))
    zeroed([layer.ffn for layer in models[1].decoder.layers])
    working, broken = learned_losses(*models, "pairs", 150, vocab=16)
    assert working < broken - 0.5, (working, broken)
    described = plugformer.registry.describe("feedforward", "swiglu")
    assert {a.name: a.default for a in described.args} == {"d_ff": None, "multiple_of": 256, "bias": False}
