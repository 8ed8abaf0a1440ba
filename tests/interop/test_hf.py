"""to_hf / from_hf against Hugging Face's own LlamaForCausalLM and GPT2LMHeadModel: random
float32 models from configs (nothing downloaded), logits, greedy generation through HF's
``generate``, bit-identical round trips, and refusals that name the part."""

import pytest
import torch

import plugformer
from plugformer.interop import InteropError, from_hf, hf_config, to_hf

transformers = pytest.importorskip("transformers")

LLAMA_SPECS = [
    "llama_tiny",  # untied head, interleaved rope, GQA 4 heads / 2 kv heads
    "llama_tiny(tie_embeddings=true)",
    "llama_tiny(pe=rope(base=500.0, layout='half'), ffn=swiglu(d_ff=96, bias=true), bias=true, "
    "norm=rmsnorm(eps=1e-05), heads=8, kv_heads=2)",
]
GPT_SPECS = [
    "gpt_tiny",  # tied head, exact gelu
    "gpt_tiny(tie_embeddings=false)",
    "gpt_tiny(ffn=gelu(d_ff=128, approximate='tanh'), norm=layernorm(eps=1e-06), max_len=64)",
]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def randomise(model: torch.nn.Module) -> torch.nn.Module:
    """Norm gains and biases away from their 1 / 0 initialisation, so their mapping counts."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                param.uniform_(0.5, 1.5) if name.endswith("weight") else param.uniform_(-0.2, 0.2)
    return model.eval()


def ours(spec: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return randomise(plugformer.build(spec))


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert torch.equal(a[name], b[name]), name


@pytest.mark.parametrize("spec", LLAMA_SPECS + GPT_SPECS)
def test_to_hf_gives_our_logits(spec):
    model = ours(spec)
    hf = to_hf(model)
    expected = "LlamaForCausalLM" if "llama" in spec else "GPT2LMHeadModel"
    assert type(hf).__name__ == expected
    ids = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, model(ids), rtol=0, atol=1e-5)


def test_llama_config_maps_every_setting():
    model = ours(LLAMA_SPECS[2])
    config = hf_config(model)
    attn = model.decoder.layers[0].self_attn
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (8, 2, attn.head_dim)
    assert (config.hidden_size, config.num_hidden_layers, config.vocab_size) == (64, 2, 256)
    assert (config.intermediate_size, config.rms_norm_eps, config.max_position_embeddings) == (96, 1e-5, 256)
    assert config.attention_bias and config.mlp_bias and not config.tie_word_embeddings
    theta = (getattr(config, "rope_parameters", None) or {}).get("rope_theta", getattr(config, "rope_theta", None))
    assert theta == 500.0


def test_gpt2_config_maps_every_setting():
    config = hf_config(ours(GPT_SPECS[2]))
    assert (config.n_embd, config.n_head, config.n_layer, config.n_inner) == (64, 4, 2, 128)
    assert (config.n_positions, config.vocab_size, config.layer_norm_epsilon) == (64, 256, 1e-6)
    assert config.activation_function == "gelu_new" and config.tie_word_embeddings
    assert hf_config(ours("gpt_tiny")).activation_function == "gelu"


@pytest.mark.parametrize("spec", [LLAMA_SPECS[0], LLAMA_SPECS[1], GPT_SPECS[0], GPT_SPECS[2]])
def test_hf_greedy_generate_matches_ours(spec):
    model = ours(spec)
    hf = to_hf(model)
    prompt = torch.randint(0, 256, (2, 8), generator=torch.Generator().manual_seed(2))
    new = model.generate(prompt, 32)  # ours: the new tokens only
    theirs = hf.generate(
        prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=32, do_sample=False,
        num_beams=1,
    )  # Hugging Face: prompt + new tokens
    assert new.shape == (2, 32) and theirs.shape == (2, 40)
    assert torch.equal(theirs[:, :8], prompt)
    assert torch.equal(theirs[:, 8:], new)


@pytest.mark.parametrize("spec", LLAMA_SPECS + GPT_SPECS)
def test_round_trip_ours_hf_ours_keeps_every_bit(spec):
    model = ours(spec)
    layout = getattr(model.decoder.pe, "layout", "interleaved")
    back = from_hf(to_hf(model), rope_layout=layout)
    assert_same_state(model.state_dict(), back.state_dict())
    assert (back.lm_head.weight is back.embed.weight) == (model.lm_head.weight is model.embed.weight)
    assert plugformer.build(str(back.spec)).spec == back.spec


def llama_hf(tied: bool, seed: int = 3):
    config = transformers.LlamaConfig(
        vocab_size=128, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=128,
        rms_norm_eps=1e-5, rope_theta=20000.0, tie_word_embeddings=tied,
        bos_token_id=None, eos_token_id=None,
    )
    torch.manual_seed(seed)
    return randomise(transformers.LlamaForCausalLM(config))


def gpt2_hf(tied: bool, activation: str = "gelu_new", seed: int = 4):
    config = transformers.GPT2Config(
        vocab_size=128, n_positions=64, n_embd=64, n_layer=2, n_head=4, n_inner=96,
        activation_function=activation, tie_word_embeddings=tied, bos_token_id=None,
        eos_token_id=None, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )
    torch.manual_seed(seed)
    return randomise(transformers.GPT2LMHeadModel(config))


@pytest.mark.parametrize(
    "make, layout",
    [
        (lambda: llama_hf(tied=False), "interleaved"),
        (lambda: llama_hf(tied=True), "interleaved"),
        (lambda: llama_hf(tied=False), "half"),
        (lambda: gpt2_hf(tied=True), "interleaved"),
        (lambda: gpt2_hf(tied=False, activation="gelu"), "interleaved"),
        (lambda: gpt2_hf(tied=True, activation="gelu_pytorch_tanh"), "interleaved"),
    ],
)
def test_from_hf_gives_their_logits_and_goes_back_bit_identical(make, layout):
    theirs = make()
    model = from_hf(theirs, rope_layout=layout)
    ids = torch.randint(0, 128, (2, 20), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), theirs(ids).logits, rtol=0, atol=1e-5)
    assert_same_state(theirs.state_dict(), to_hf(model).state_dict())


def test_from_hf_reads_the_config():
    model = from_hf(llama_hf(tied=True))
    attn = model.decoder.layers[0].self_attn
    assert (attn.heads, attn.kv_heads) == (4, 1)
    assert model.decoder.pe.base == 20000.0 and model.decoder.norm.eps == 1e-5
    assert model.lm_head.weight is model.embed.weight


@pytest.mark.parametrize(
    "spec, named",
    [
        ("gpt_tiny(attn=bra(region=8, topk=2))", "bra"),
        ("llama_tiny(attn=bra(region=8, topk=2))", "bra"),
        ("llama_tiny(pe=alibi)", "alibi"),
        ("llama_tiny(ffn=moe)", "moe"),
        ("llama_tiny(block=post_ln)", "post_ln"),
        ("gpt_tiny(block=post_ln)", "post_ln"),
        ("llama_tiny(pe=learned)", "learned"),
        ("llama_tiny(pe=rope(fraction=0.5))", "fraction"),
        ("llama_tiny(qk_norm=rmsnorm)", "qk_norm"),
        ("llama_tiny(norm=layernorm)", "layernorm"),
        ("gpt_tiny(kv_heads=2)", "kv_heads"),
        ("gpt_tiny(ffn=relu)", "relu"),
        ("gpt_tiny(pe=sinusoidal)", "sinusoidal"),
        ("gpt_tiny(final_norm=false)", "final_norm"),
        ("gpt_tiny(attn=fused(scale=1.0))", "scale"),
    ],
)
def test_parts_without_counterpart_are_named(spec, named):
    with pytest.raises(InteropError, match=named) as err:
        to_hf(plugformer.build(spec))
    assert isinstance(err.value, ValueError)


def test_encoder_decoder_is_refused():
    with pytest.raises(InteropError, match="decoder-only 'lm'"):
        to_hf(plugformer.build("transformer_tiny"))


@pytest.mark.parametrize(
    "make, named",
    [
        (lambda: transformers.LlamaConfig(
            vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
            num_attention_heads=2, rope_scaling={"rope_type": "linear", "factor": 2.0},
            rope_theta=10000.0), "linear"),
        (lambda: transformers.LlamaConfig(
            vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
            num_attention_heads=2, hidden_act="gelu"), "hidden_act"),
        (lambda: transformers.GPT2Config(
            vocab_size=32, n_embd=32, n_layer=1, n_head=2, scale_attn_by_inverse_layer_idx=True),
         "scale_attn_by_inverse_layer_idx"),
        (lambda: transformers.GPT2Config(
            vocab_size=32, n_embd=32, n_layer=1, n_head=2, activation_function="relu"), "relu"),
    ],
)
def test_hf_settings_without_counterpart_are_named(make, named):
    config = make()
    cls = transformers.LlamaForCausalLM if config.model_type == "llama" else transformers.GPT2LMHeadModel
    with pytest.raises(InteropError, match=named):
        from_hf(cls(config))


def test_other_hf_architectures_are_refused():
    config = transformers.GPTNeoXConfig(
        vocab_size=32, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
    )
    with pytest.raises(InteropError, match="gpt_neox"):
        from_hf(transformers.GPTNeoXForCausalLM(config))
