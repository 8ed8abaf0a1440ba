"""Encoder, Decoder, Seq2SeqStack and the token models around them.

Causality, padding and incremental decoding of every attention kernel (and every other part)
in ``gpt_tiny`` and ``transformer_tiny`` are the conformance kit's checks (``causality``,
``padding_invariance``, ``cached_decoding``), run over the built-in parts in
tests/testing/test_builtins.py."""

import pytest
import torch

import plugformer
from plugformer.core.stack import Seq2SeqStack


def build(spec: str):
    torch.manual_seed(0)
    return plugformer.build(spec).eval()


def ids(*shape, seed=0):
    return torch.randint(3, 256, shape, generator=torch.Generator().manual_seed(seed))


def test_pad_id_gives_the_padding_mask():
    model = build("transformer_tiny(pad_id=0)")
    src, tgt = ids(2, 8), ids(2, 5, seed=1)
    src[1, 5:] = 0
    with torch.no_grad():
        by_id = model(src, tgt)
        by_mask = model(src, tgt, src_key_padding_mask=src == 0)
    assert torch.equal(by_id, by_mask)


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
