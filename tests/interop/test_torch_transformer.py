"""from_torch / to_torch against torch.nn.Transformer, the reference of the whole assembly."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import plugformer
from plugformer.core.stack import Seq2SeqStack
from plugformer.interop import from_torch, to_torch

pytestmark = pytest.mark.filterwarnings(
    "ignore:Support for mismatched key_padding_mask and attn_mask:UserWarning",
    "ignore:enable_nested_tensor is True:UserWarning",
)

D, HEADS, FF = 32, 4, 64
B, S, T = 3, 7, 6
TOL = 1e-5


@pytest.fixture(autouse=True)
def no_fast_path():
    """In eval mode without grad, nn.TransformerEncoder takes the "fast path" and turns padded
    inputs into nested tensors, whose padded positions come out as zeros. Disable it so that
    every position, padded or not, is compared against the plain (reference) computation."""
    enabled = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    yield
    torch.backends.mha.set_fastpath_enabled(enabled)


def make_torch(*, norm_first=False, activation="relu", bias=True, eps=1e-5, enc=2, dec=3,
               batch_first=True, seed=0) -> nn.Transformer:
    """A small nn.Transformer in eval mode, norms perturbed: with gamma = 1 and beta = 0 a
    missing or misplaced norm is invisible (LN(LN(x)) = LN(x))."""
    torch.manual_seed(seed)
    t = nn.Transformer(
        d_model=D, nhead=HEADS, num_encoder_layers=enc, num_decoder_layers=dec,
        dim_feedforward=FF, dropout=0.0, activation=activation, layer_norm_eps=eps,
        batch_first=batch_first, norm_first=norm_first, bias=bias,
    )
    with torch.no_grad():
        for module in t.modules():
            if isinstance(module, nn.LayerNorm):
                module.weight.copy_(1 + 0.5 * torch.randn_like(module.weight))
                if module.bias is not None:
                    module.bias.copy_(0.5 * torch.randn_like(module.bias))
    return t.eval()


def inputs(seed=1):
    g = torch.Generator().manual_seed(seed)
    src = torch.randn(B, S, D, generator=g)
    tgt = torch.randn(B, T, D, generator=g)
    return src, tgt


def padding(lengths, total):
    """Right padding, True = pad (nn.Transformer's convention)."""
    return torch.arange(total)[None, :] >= torch.tensor(lengths)[:, None]


def masked_call_kwargs():
    src_pad = padding([S, 4, 2], S)
    return dict(
        tgt_mask=nn.Transformer.generate_square_subsequent_mask(T),
        src_key_padding_mask=src_pad,
        tgt_key_padding_mask=padding([T, 5, 3], T),
        memory_key_padding_mask=src_pad,
    )


def outputs_and_grads(model, src, tgt, weight, **kwargs):
    src = src.clone().requires_grad_(True)
    tgt = tgt.clone().requires_grad_(True)
    out = model(src, tgt, **kwargs)
    (out * weight).sum().backward()
    return out.detach(), src.grad, tgt.grad


CONFIGS = [
    pytest.param(dict(norm_first=nf, activation=act, bias=bias), id=f"{'pre' if nf else 'post'}-{name}-bias{bias}")
    for nf in (False, True)
    for name, act in (("relu", "relu"), ("gelu", F.gelu))
    for bias in (True, False)
]


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "masks"])
def test_from_torch_matches_outputs_and_input_gradients(config, masked):
    t = make_torch(**config)
    ours = from_torch(t).eval()
    src, tgt = inputs()
    kwargs = masked_call_kwargs() if masked else {}
    weight = torch.randn(B, T, D, generator=torch.Generator().manual_seed(2))
    expected = outputs_and_grads(t, src, tgt, weight, **kwargs)
    actual = outputs_and_grads(ours, src, tgt, weight, **kwargs)
    for name, a, e in zip(("output", "d src", "d tgt"), actual, expected):
        assert torch.isfinite(a).all(), name
        assert (a - e).abs().max() <= TOL, f"{name}: max abs diff {(a - e).abs().max():.2e}"


def test_from_torch_matches_without_grad_and_with_dense_kernel():
    t = make_torch(norm_first=True, activation="gelu")
    src, tgt = inputs()
    kwargs = masked_call_kwargs()
    with torch.no_grad():
        expected = t(src, tgt, **kwargs)
        for attn in ("fused", "dense"):
            actual = from_torch(t, attn=attn).eval()(src, tgt, **kwargs)
            assert (actual - expected).abs().max() <= TOL, attn


def test_arbitrary_attention_masks_agree():
    t = make_torch(norm_first=True)
    ours = from_torch(t).eval()
    src, tgt = inputs()
    g = torch.Generator().manual_seed(4)
    src_mask = torch.rand(S, S, generator=g) > 0.6
    src_mask.fill_diagonal_(False)  # True = blocked; every query keeps at least itself
    memory_mask = torch.rand(T, S, generator=g) > 0.6
    memory_mask[:, 0] = False
    kwargs = dict(src_mask=src_mask, memory_mask=memory_mask, tgt_mask=nn.Transformer.generate_square_subsequent_mask(T))
    with torch.no_grad():
        assert (ours(src, tgt, **kwargs) - t(src, tgt, **kwargs)).abs().max() <= TOL


def test_causal_flag_and_causal_mask_agree():
    t = make_torch()
    ours = from_torch(t).eval()
    src, tgt = inputs()
    mask = nn.Transformer.generate_square_subsequent_mask(T)
    with torch.no_grad():
        expected = t(src, tgt, tgt_mask=mask, tgt_is_causal=True)
        by_mask = ours(src, tgt, tgt_mask=mask)
        by_bool_mask = ours(src, tgt, tgt_mask=mask.isinf())
    assert (by_mask - expected).abs().max() <= TOL
    assert (by_bool_mask - expected).abs().max() <= TOL


def test_custom_eps_and_layer_counts():
    t = make_torch(eps=1e-2, enc=1, dec=4)
    ours = from_torch(t).eval()
    assert len(ours.encoder.layers) == 1 and len(ours.decoder.layers) == 4
    assert {m.eps for m in ours.modules() if isinstance(m, nn.LayerNorm)} == {1e-2}
    src, tgt = inputs()
    with torch.no_grad():
        assert (ours(src, tgt) - t(src, tgt)).abs().max() <= TOL


def test_batch_first_false_source_gives_a_batch_first_stack():
    t = make_torch(batch_first=False)
    ours = from_torch(t).eval()
    src, tgt = inputs()
    with torch.no_grad():
        expected = t(src.transpose(0, 1), tgt.transpose(0, 1)).transpose(0, 1)
        assert (ours(src, tgt) - expected).abs().max() <= TOL


def test_bias_false_removes_every_bias():
    ours = from_torch(make_torch(bias=False))
    biased = [name for name, _ in ours.named_parameters() if name.endswith("bias")]
    assert biased == []


def test_final_norms_are_copied():
    t = make_torch()
    ours = from_torch(t)
    assert torch.equal(ours.encoder.norm.weight, t.encoder.norm.weight)
    assert torch.equal(ours.decoder.norm.bias, t.decoder.norm.bias)


def test_spec_rebuilds_the_same_structure():
    ours = from_torch(make_torch(norm_first=True, activation="gelu", bias=False))
    assert isinstance(ours, Seq2SeqStack)
    text = str(ours.spec)
    assert "block=pre_ln" in text and "gelu(d_ff=64, bias=false, approximate='none')" in text
    rebuilt = plugformer.build(ours.spec, vocab=10).stack
    rebuilt.load_state_dict(ours.state_dict(), strict=True)


@pytest.mark.parametrize(
    "activation", [torch.tanh, nn.GELU(approximate="tanh"), nn.SiLU()], ids=["tanh", "gelu-tanh", "silu"]
)
def test_from_torch_refuses_other_activations(activation):
    with pytest.raises(ValueError, match="activation"):
        from_torch(make_torch(activation=activation))


def test_from_torch_refuses_other_modules():
    with pytest.raises(TypeError, match="nn.Transformer"):
        from_torch(nn.Linear(2, 2))


# ----------------------------------------------------------------------------------- to_torch


def test_round_trip_keeps_every_weight():
    t = make_torch(norm_first=True, bias=False, eps=1e-3, enc=2, dec=1)
    back = to_torch(from_torch(t))
    assert back.batch_first and back.encoder.layers[0].norm_first
    assert list(back.state_dict()) == list(t.state_dict())
    for key, value in t.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key


def test_to_torch_of_a_built_model_agrees():
    model = plugformer.build(
        "encdec(d_model=32, heads=4, enc_layers=2, dec_layers=1, vocab=10, dropout=0.0, pe=none(), "
        "ffn=gelu(d_ff=48), block=pre_ln)"
    ).eval()
    torch.manual_seed(3)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.LayerNorm):
                module.weight.normal_(1.0, 0.5)
                module.bias.normal_(0.0, 0.5)
    t = to_torch(model).eval()
    src, tgt = inputs()
    kwargs = masked_call_kwargs()
    with torch.no_grad():
        assert (t(src, tgt, **kwargs) - model.stack(src, tgt, **kwargs)).abs().max() <= TOL
    again = from_torch(t)
    for key, value in model.stack.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key


TINY = "encdec(d_model=32, heads=4, layers=1, vocab=10, dropout=0.0, pe=none()"


@pytest.mark.parametrize(
    "spec, message",
    [
        ("transformer_tiny", "positional encoding"),
        (TINY + ", attn=cosine)", "kernel CosineAttention"),
        (TINY + ", kv_heads=2)", "grouped-query"),
        (TINY + ", final_norm=false)", "final norms"),
        (TINY + ", ffn=relu(bias=false))", "one bias flag"),
        (TINY + ", attn=dense(scale=1.0))", "scale"),
        ("gpt_tiny", "Seq2SeqStack"),
    ],
)
def test_to_torch_names_the_part_that_does_not_fit(spec, message):
    if "cosine" in spec and "cosine" not in plugformer.registry.names("attention"):
        pytest.skip("the example plugin (cosine attention) is not installed")
    with pytest.raises(ValueError, match=message):
        to_torch(plugformer.build(spec))
