"""The builder: resolve specs against the registry, build models and parts, report errors."""

from __future__ import annotations

import pytest
import torch

import plugformer
from plugformer import SpecError, build, build_part, parse, resolve
from plugformer.plugins.dense import DenseAttention
from plugformer.plugins.fused import FusedAttention


def test_build_gives_model_with_canonical_spec():
    model = build("transformer_tiny(attn=dense)", vocab=50)
    assert model.kind == "encdec"
    assert model.spec.name == "transformer_tiny"
    assert model.spec.kwargs["vocab"] == 50
    assert str(model.spec.kwargs["attn"]) == "dense(scale=none)"
    # canonical text parses back to the same spec, and resolving it again changes nothing
    assert parse(str(model.spec)) == model.spec
    assert resolve(str(model.spec)) == model.spec


def test_resolve_fills_every_default_from_the_signature():
    spec = resolve("encdec(d_model=32, heads=2)")
    described = {a.name: a.default for a in plugformer.registry.describe("model", "encdec").args}
    assert list(spec.kwargs) == list(described)
    assert spec.kwargs["layers"] == described["layers"]
    assert spec.kwargs["ffn"].name == "relu"


def test_bare_name_in_string_slot_is_the_string():
    spec = resolve("transformer_tiny(attn=fused(backend=math))")
    assert spec.kwargs["attn"].kwargs["backend"] == "math"


def test_int_is_accepted_where_float_is_declared():
    spec = resolve("transformer_tiny(dropout=0)")
    assert isinstance(spec.kwargs["dropout"], float)


def test_presets_are_the_base_factory_with_other_defaults():
    tiny = resolve("transformer_tiny")
    by_hand = resolve(str(tiny).replace("transformer_tiny", "encdec", 1))
    assert dict(tiny.args) == dict(by_hand.args)
    base = resolve("transformer_base").kwargs
    assert (base["d_model"], base["heads"], base["layers"]) == (512, 8, 6)
    assert base["ffn"].kwargs["d_ff"] == 2048 and base["block"].name == "post_ln"


def test_per_layer_list_alternates_parts():
    model = build("transformer_tiny(layers=3, attn=[dense, fused])")
    kernels = [type(layer.self_attn.kernel) for layer in model.stack.encoder.layers]
    assert kernels == [DenseAttention, FusedAttention, DenseAttention]


def test_per_layer_values_of_a_part_argument():
    model = build("transformer_tiny(layers=2, ffn=relu(d_ff=[32, 64]))")
    widths = [layer.ffn.up_proj.out_features for layer in model.stack.encoder.layers]
    assert widths == [32, 64]


def test_self_and_cross_attention_overrides():
    model = build("transformer_tiny(attn=fused, self_attn=dense)")
    layer = model.stack.decoder.layers[0]
    assert isinstance(layer.self_attn.kernel, DenseAttention)
    assert isinstance(layer.cross_attn.kernel, FusedAttention)
    assert isinstance(model.stack.encoder.layers[0].self_attn.kernel, FusedAttention)


def test_build_part_alone():
    kernel = build_part("attention", "dense", d_model=32, heads=4)
    q = torch.randn(1, 4, 5, 8)
    assert kernel(q, q, q).shape == (1, 4, 5, 8)
    ffn = build_part("feedforward", "relu(d_ff=16)", d_model=8)
    assert ffn.up_proj.weight.shape == (16, 8)


def test_build_part_rejects_unknown_context_field():
    with pytest.raises(TypeError, match="d_modl"):
        build_part("attention", "dense", d_modl=32)


def test_overrides_replace_written_arguments():
    model = build("transformer_tiny(vocab=10)", vocab=20, layers=1)
    assert model.spec.kwargs["vocab"] == 20
    assert len(model.stack.encoder.layers) == 1


def test_gqa_kv_heads():
    model = build("transformer_tiny(heads=4, kv_heads=2)")
    attn = model.stack.encoder.layers[0].self_attn
    assert attn.k_proj.out_features == 2 * 16 and attn.q_proj.out_features == 4 * 16


def test_tied_embeddings_share_one_tensor():
    model = build("transformer_tiny(tie_embeddings=true)")
    assert model.lm_head.weight is model.tgt_embed.weight is model.src_embed.weight


@pytest.mark.parametrize(
    "text, message, at, hint",
    [
        ("transformer_tiny(attn=fussed)", "unknown attention 'fussed'", "fussed", "did you mean 'fused'?"),
        ("transformr_tiny", "unknown model 'transformr_tiny'", "transformr_tiny", "did you mean 'transformer_tiny'"),
        ("transformer_tiny(atn=dense)", "unknown argument 'atn' of model 'transformer_tiny'", "atn", "did you mean 'attn'?"),
        ("transformer_tiny(layers=2.5)", "argument 'layers' of model 'transformer_tiny' must be an integer, got 2.5", "2.5", None),
        ("transformer_tiny(final_norm=1)", "must be true or false, got 1", "1)", None),
        ("transformer_tiny(attn=fused(backend=flsh))", "must be one of 'auto', 'flash'", "flsh", "did you mean 'flash'?"),
        ("transformer_tiny(pe=relu)", "unknown positional 'relu'; available:", "relu", None),
        ("transformer_tiny(attn={dense, fused})", "holds a choice", "{dense", None),
        ("transformer_tiny(d_model=63)", "d_model (63) must be divisible by heads (4)", "63", None),
        ("transformer_tiny(heads=4, kv_heads=3)", "heads (4) must be a multiple of kv_heads (3)", "3)", None),
        ("transformer_tiny(layers=0)", "layers must be >= 1, got 0", "transformer_tiny", None),
        ("transformer_tiny(ffn=relu(d_ff=0))", "d_ff must be >= 1, got 0", "relu", None),
        ("transformer_tiny(attn=[])", "empty per-layer list", "[]", None),
    ],
)
def test_errors_say_what_where_and_what_would_be_right(text, message, at, hint):
    with pytest.raises(SpecError) as info:
        resolve(text)
    err = info.value
    assert message in err.message
    assert err.text == text
    assert err.position == text.index(at)
    rendered = str(err).splitlines()
    assert rendered[1] == "  " + text
    assert rendered[2].index("^") == 2 + text.index(at)
    if hint:
        assert hint in err.hint


def test_resolve_check_runs_before_any_real_tensor(monkeypatch):
    """An impossible combination is refused by a meta-device build: no parameter memory."""
    seen = []
    real_empty = torch.empty

    def spy(*args, **kwargs):
        seen.append(str(kwargs.get("device")))
        return real_empty(*args, **kwargs)

    monkeypatch.setattr(torch, "empty", spy)
    resolve("transformer_tiny")
    assert seen and set(seen) == {"meta"}


def test_non_spec_input_is_a_type_error():
    with pytest.raises(TypeError, match="a spec is a string or a Spec"):
        build(42)


def test_none_in_a_part_slot_is_the_part_named_none():
    assert resolve("transformer_tiny(pe=none)").kwargs["pe"].name == "none"
    assert resolve("transformer_tiny(self_attn=none)").kwargs["self_attn"] is None  # optional slot
