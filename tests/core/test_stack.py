"""Encoder, Decoder, Seq2SeqStack and the token models around them: causality, padding,
incremental decoding, for every registered attention kernel."""

import pytest
import torch

import plugformer
from plugformer.core.stack import Seq2SeqStack

#: Arguments that make kernels differ from dense attention at these test sizes (sequences
#: span more regions than topk, more positions than the window).
KERNEL_ARGS = {"bra": "bra(region=4, topk=2)", "local": "local(window=4)"}


def kernels(capability: str):
    """Every registered attention kernel that declares ``capability``, as spec text."""
    params = []
    for part in plugformer.registry.list("attention"):
        text = KERNEL_ARGS.get(part.name, part.name)
        marks = []
        if part.name not in KERNEL_ARGS and any(arg.required for arg in part.args):
            marks.append(pytest.mark.skip(reason=f"{part.name} needs arguments; add it to KERNEL_ARGS"))
        elif not part.capabilities.get(capability, True):
            marks.append(pytest.mark.skip(reason=f"{part.name} does not declare {capability}"))
        params.append(pytest.param(text, id=part.name, marks=marks))
    return params


def build(spec: str):
    torch.manual_seed(0)
    return plugformer.build(spec).eval()


def build_encdec(attn: str):
    """transformer_tiny with ``attn`` everywhere, or everywhere but cross-attention when the
    kernel refuses to attend across two sequences (sliding windows)."""
    try:
        return build(f"transformer_tiny(attn={attn})")
    except plugformer.SpecError as err:
        if "cross" not in str(err):
            raise
        return build(f"transformer_tiny(attn={attn}, cross_attn=fused)")


def ids(*shape, seed=0):
    return torch.randint(3, 256, shape, generator=torch.Generator().manual_seed(seed))


def changed_at(x, t):
    y = x.clone()
    y[:, t] = 3 + (x[:, t] - 3 + 101) % 253
    return y


@pytest.mark.parametrize("attn", kernels("supports_causal"))
def test_encdec_decoder_is_causal(attn):
    model = build_encdec(attn)
    src, tgt = ids(2, 10), ids(2, 12, seed=1)
    with torch.no_grad():
        logits = model(src, tgt)
        for t in (1, 6, 11):
            other = model(src, changed_at(tgt, t))
            assert (other[:, :t] - logits[:, :t]).abs().max() <= 1e-6, f"position {t} leaks backwards"
            assert (other[:, t:] - logits[:, t:]).abs().max() > 1e-4


@pytest.mark.parametrize("attn", kernels("supports_causal"))
def test_lm_is_causal(attn):
    model = build(f"gpt_tiny(attn={attn})")
    x = ids(2, 12)
    with torch.no_grad():
        logits = model(x)
        for t in (1, 6, 11):
            other = model(changed_at(x, t))
            assert (other[:, :t] - logits[:, :t]).abs().max() <= 1e-6, f"position {t} leaks backwards"
            assert (other[:, t:] - logits[:, t:]).abs().max() > 1e-4


@pytest.mark.parametrize("attn", kernels("supports_mask"))
def test_encdec_outputs_do_not_depend_on_padding_contents(attn):
    model = build_encdec(attn)
    src, tgt = ids(2, 10), ids(2, 12, seed=1)
    src_pad = torch.arange(10)[None, :] >= torch.tensor([10, 6])[:, None]  # right padding
    tgt_pad = torch.arange(12)[None, :] < torch.tensor([0, 4])[:, None]  # left padding
    masks = dict(src_key_padding_mask=src_pad, tgt_key_padding_mask=tgt_pad)
    with torch.no_grad():
        logits = model(src, tgt, **masks)
        other = model(
            torch.where(src_pad, ids(2, 10, seed=5), src), torch.where(tgt_pad, ids(2, 12, seed=6), tgt), **masks
        )
    assert torch.isfinite(logits).all()
    real = ~tgt_pad
    assert (other[real] - logits[real]).abs().max() <= 1e-5


@pytest.mark.parametrize("attn", kernels("supports_mask"))
def test_lm_outputs_do_not_depend_on_padding_contents(attn):
    model = build(f"gpt_tiny(attn={attn})")
    x = ids(2, 12)
    pad = torch.arange(12)[None, :] < torch.tensor([0, 5])[:, None]  # left padding
    with torch.no_grad():
        logits = model(x, key_padding_mask=pad)
        other = model(torch.where(pad, ids(2, 12, seed=7), x), key_padding_mask=pad)
    assert torch.isfinite(logits).all()
    assert (other[~pad] - logits[~pad]).abs().max() <= 1e-5


def test_pad_id_gives_the_padding_mask():
    model = build("transformer_tiny(pad_id=0)")
    src, tgt = ids(2, 8), ids(2, 5, seed=1)
    src[1, 5:] = 0
    with torch.no_grad():
        by_id = model(src, tgt)
        by_mask = model(src, tgt, src_key_padding_mask=src == 0)
    assert torch.equal(by_id, by_mask)


@pytest.mark.parametrize("attn", kernels("supports_cache"))
def test_encdec_incremental_decoding_equals_the_full_pass(attn, cached_logits):
    model = build_encdec(attn)
    src, tgt = ids(2, 10), ids(2, 9, seed=1)
    with torch.no_grad():
        memory = model.encode(src)
        full = model.decode(tgt, memory)
        cached = cached_logits(model, tgt, prefix=3, memory=memory)
    assert (cached - full).abs().max() <= 1e-5


@pytest.mark.parametrize("pe", ["learned", "sinusoidal"])
@pytest.mark.parametrize("attn", kernels("supports_cache"))
def test_lm_incremental_decoding_equals_the_full_pass(attn, pe, cached_logits):
    model = build(f"gpt_tiny(attn={attn}, pe={pe})")
    x = ids(2, 9)
    with torch.no_grad():
        full = model(x)
        cached = cached_logits(model, x, prefix=4)
    assert (cached - full).abs().max() <= 1e-5


# --------------------------------------------------------------------------------- Seq2SeqStack


@pytest.fixture(scope="module")
def stack() -> Seq2SeqStack:
    return build("transformer_tiny(pe=none())").stack


def test_causal_mask_is_recognised_as_causal(stack):
    src, tgt = torch.randn(2, 5, 64), torch.randn(2, 6, 64)
    float_mask = torch.nn.Transformer.generate_square_subsequent_mask(6)
    with torch.no_grad():
        by_flag = stack(src, tgt, tgt_is_causal=True)
        assert (stack(src, tgt, tgt_mask=float_mask) - by_flag).abs().max() <= 1e-6
        assert (stack(src, tgt, tgt_mask=float_mask.isinf()) - by_flag).abs().max() <= 1e-6
        assert (stack(src, tgt) - by_flag).abs().max() > 1e-4  # no mask: not causal, as nn.Transformer


def test_stack_wants_batch_first_three_dimensional_inputs(stack):
    with pytest.raises(ValueError, match=r"\(batch, length, d_model\)"):
        stack(torch.randn(5, 64), torch.randn(2, 6, 64))
    with pytest.raises(ValueError, match="same batch size"):
        stack(torch.randn(3, 5, 64), torch.randn(2, 6, 64))
    with pytest.raises(ValueError, match="widths differ"):
        stack(torch.randn(2, 5, 64), torch.randn(2, 6, 32))


def test_memory_is_causal_is_refused(stack):
    with pytest.raises(ValueError, match="memory_is_causal"):
        stack(torch.randn(2, 5, 64), torch.randn(2, 5, 64), memory_is_causal=True)


def test_final_norm_false_leaves_the_stacks_without_norms():
    model = build("transformer_tiny(final_norm=false)")
    assert isinstance(model.stack.encoder.norm, torch.nn.Identity)
    assert isinstance(model.stack.decoder.norm, torch.nn.Identity)


def test_src_is_causal_makes_the_encoder_causal(stack):
    src, tgt = torch.randn(2, 6, 64), torch.randn(2, 3, 64)
    with torch.no_grad():
        memory = stack.encoder(src, causal=True)
        changed = src.clone()
        changed[:, 4] += 1.0
        assert (stack.encoder(changed, causal=True)[:, :4] - memory[:, :4]).abs().max() <= 1e-6
        assert (stack(src, tgt, src_is_causal=True) - stack.decoder(tgt, memory, causal=False)).abs().max() <= 1e-6
