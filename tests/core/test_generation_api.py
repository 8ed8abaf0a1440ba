"""The models' public generation API: Hugging Face keyword aliases, input padding, caches."""

from __future__ import annotations

import pytest
import torch

import plugformer

VOCAB = 40


@pytest.fixture(scope="module")
def lm():
    torch.manual_seed(0)
    return plugformer.build("gpt_tiny", vocab=VOCAB).eval()


@pytest.fixture(scope="module")
def encdec():
    torch.manual_seed(0)
    return plugformer.build("transformer_tiny", vocab=VOCAB).eval()


def prompt() -> torch.Tensor:
    return torch.tensor([[5, 6, 7, 8, 9], [11, 12, 13, 3, 2]])


@pytest.mark.parametrize("ours, theirs", [
    ({"eos_id": 7}, {"eos_token_id": 7}),
    ({"beams": 3}, {"num_beams": 3}),
    ({"beams": 2, "eos_id": 4}, {"num_beams": 2, "eos_token_id": 4}),
    ({}, {"do_sample": False}),
])
def test_hf_aliases_generate_what_our_names_do(lm, encdec, ours, theirs):
    assert torch.equal(lm.generate(prompt(), 6, **theirs), lm.generate(prompt(), 6, **ours))
    assert torch.equal(
        encdec.generate(prompt(), 6, bos_id=1, **theirs), encdec.generate(prompt(), 6, bos_id=1, **ours)
    )


def test_do_sample_samples_at_temperature_one_as_hf(lm):
    sampled = lm.generate(prompt(), 8, do_sample=True, seed=3)
    assert torch.equal(sampled, lm.generate(prompt(), 8, temperature=1.0, seed=3))
    assert torch.equal(
        lm.generate(prompt(), 8, do_sample=True, temperature=0.5, seed=3),
        lm.generate(prompt(), 8, temperature=0.5, seed=3),
    )


def test_eos_token_id_stops_rows_as_eos_id(lm):
    greedy = lm.generate(prompt(), 6)
    eos = int(greedy[0, 1])
    first = int((greedy[0] == eos).nonzero()[0])
    out = lm.generate(prompt(), 6, eos_token_id=eos)
    assert torch.equal(out[0, : first + 1], greedy[0, : first + 1])
    assert (out[0, first + 1 :] == 0).all()  # pad_id unset: rows are padded with 0 after eos


@pytest.mark.parametrize("kwargs, message", [
    ({"eos_id": 3, "eos_token_id": 4}, "eos_token_id"),
    ({"beams": 2, "num_beams": 3}, "num_beams"),
    ({"temperature": 0.7, "do_sample": False}, "do_sample"),
])
def test_conflicting_alias_and_name_are_refused_by_name(lm, kwargs, message):
    with pytest.raises(ValueError, match=message):
        lm.generate(prompt(), 3, **kwargs)


def test_lm_returns_new_tokens_only(lm):
    out = lm.generate(prompt(), 4)
    assert out.shape == (2, 4)
    logits = lm(prompt())[:, -1]
    assert torch.equal(out[:, 0], logits.argmax(-1))


def test_pad_inputs_left_pads_prompts_and_right_pads_sources(lm, encdec):
    ids, padding = lm.pad_inputs([[3, 4, 5], [7]])
    assert ids.tolist() == [[3, 4, 5], [0, 0, 7]]
    assert padding.tolist() == [[False] * 3, [True, True, False]]
    ids, padding = encdec.pad_inputs([[3, 4, 5], [7]])
    assert ids.tolist() == [[3, 4, 5], [7, 0, 0]]
    assert padding.tolist() == [[False] * 3, [False, True, True]]
    with pytest.raises(ValueError, match="at least one row"):
        lm.pad_inputs([])


def test_new_caches_has_one_cache_per_layer(lm, encdec):
    assert len(lm.new_caches()) == len(lm.decoder.layers)
    assert len(encdec.new_caches()) == len(encdec.stack.decoder.layers)


def test_padding_mask_comes_from_pad_id_when_not_given():
    model = plugformer.build("transformer_tiny", vocab=VOCAB, pad_id=0)
    src = torch.tensor([[5, 6, 0], [4, 5, 6]])
    assert model.padding_mask(src).tolist() == (src == 0).tolist()
    assert model.padding_mask(torch.tensor([[5, 6]])) is None
    given = torch.tensor([[False, True]])
    assert model.padding_mask(torch.tensor([[5, 0]]), given) is given
