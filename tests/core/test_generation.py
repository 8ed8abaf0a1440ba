"""Generation: strategies behave as defined.

That cached and uncached sessions agree at every step, for every attention kernel, prompts
left-padded and sources right-padded, is the conformance kit's ``cached_decoding`` check
(tests/testing/test_builtins.py)."""

from __future__ import annotations

import pytest
import torch

import plugformer
from plugformer.core import generation

VOCAB = 40


def test_left_padded_prompt_generates_what_the_unpadded_prompt_does():
    torch.manual_seed(0)
    model = plugformer.build("gpt_tiny(pe=learned)", vocab=VOCAB).eval()
    prompts = [[5, 6, 7, 8, 9], [11, 12]]
    ids = torch.tensor([prompts[0], [0, 0, 0] + prompts[1]])
    padding = torch.tensor([[False] * 5, [True] * 3 + [False] * 2])
    batched = model.generate(ids, 6, prompt_padding_mask=padding)
    for row, prompt in enumerate(prompts):
        alone = model.generate(torch.tensor([prompt]), 6)
        assert torch.equal(batched[row], alone[0])


def test_right_padded_sources_generate_what_unpadded_sources_do():
    torch.manual_seed(0)
    model = plugformer.build("transformer_tiny", vocab=VOCAB).eval()
    src = torch.tensor([[5, 6, 7, 8, 9], [11, 12, 0, 0, 0]])
    padding = src == 0
    batched = model.generate(src, 7, bos_id=1, src_key_padding_mask=padding)
    alone = model.generate(src[1:, :2], 7, bos_id=1)
    assert torch.equal(batched[1], alone[0])


def test_greedy_is_argmax_of_uncached_forward():
    torch.manual_seed(0)
    model = plugformer.build("gpt_tiny", vocab=VOCAB).eval()
    prompt = torch.randint(3, VOCAB, (2, 4))
    out = model.generate(prompt, 5)
    ids = prompt
    for t in range(5):
        nxt = model(ids)[:, -1].argmax(-1)
        assert torch.equal(nxt, out[:, t])
        ids = torch.cat([ids, nxt[:, None]], dim=1)


def test_stops_per_row_at_eos_and_pads_after():
    torch.manual_seed(0)
    model = plugformer.build("gpt_tiny", vocab=VOCAB).eval()
    prompt = torch.randint(3, VOCAB, (4, 3))
    free = model.generate(prompt, 6)
    eos = int(free[0, 1])  # row 0 emits this at step 1
    out = model.generate(prompt, 6, eos_id=eos)
    for row in range(4):
        hits = (out[row] == eos).nonzero()
        if len(hits):
            first = int(hits[0])
            assert torch.all(out[row, first + 1 :] == 0)
            assert torch.equal(out[row, : first + 1], free[row, : first + 1])


def test_sampling_is_seeded_and_top_k_1_is_greedy():
    torch.manual_seed(0)
    model = plugformer.build("gpt_tiny", vocab=VOCAB).eval()
    prompt = torch.randint(3, VOCAB, (3, 4))
    a = model.generate(prompt, 8, temperature=1.0, top_p=0.9, seed=7)
    b = model.generate(prompt, 8, temperature=1.0, top_p=0.9, seed=7)
    assert torch.equal(a, b)
    assert torch.equal(model.generate(prompt, 8, temperature=1.0, top_k=1, seed=3), model.generate(prompt, 8))


def test_top_p_keeps_the_smallest_set_reaching_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    draws = {int(generation.pick(logits, temperature=1.0, top_p=0.75, generator=torch.Generator().manual_seed(s))) for s in range(200)}
    assert draws == {0, 1}  # 0.5 < 0.75 <= 0.5 + 0.3


def sequence_logprob(model, prompt, tokens):
    ids = torch.cat([prompt, tokens], dim=1)
    logp = model(ids)[:, prompt.shape[1] - 1 : -1].log_softmax(-1)
    return logp.gather(-1, tokens[..., None]).sum((1, 2))


def test_beam_search_scores_at_least_greedy_and_one_beam_is_greedy():
    torch.manual_seed(0)
    model = plugformer.build("gpt_tiny", vocab=VOCAB).eval()
    prompt = torch.randint(3, VOCAB, (3, 4))
    greedy = model.generate(prompt, 6)
    assert torch.equal(model.generate(prompt, 6, beams=1), greedy)
    beam = model.generate(prompt, 6, beams=4, length_penalty=0.0)
    with torch.no_grad():
        assert torch.all(sequence_logprob(model, prompt, beam) >= sequence_logprob(model, prompt, greedy) - 1e-5)


def test_bad_generation_arguments():
    model = plugformer.build("gpt_tiny", vocab=VOCAB).eval()
    prompt = torch.randint(3, VOCAB, (1, 4))
    with pytest.raises(ValueError, match="left-padded"):
        model.generate(prompt, 2, prompt_padding_mask=torch.tensor([[False, True, False, False]]))
    with pytest.raises(ValueError, match="beam search is deterministic"):
        model.generate(prompt, 2, beams=2, temperature=1.0)
    with pytest.raises(ValueError, match="top_p must be in"):
        model.generate(prompt, 2, temperature=1.0, top_p=1.5)


@pytest.mark.slow
def test_greedy_generation_of_a_copy_trained_model_reproduces_its_inputs():
    torch.manual_seed(0)
    vocab, length, bos, eos = 16, 8, 1, 2
    model = plugformer.build("transformer_tiny", vocab=vocab)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(600):
        src = torch.randint(3, vocab, (64, length), generator=g)
        tgt = torch.cat([torch.full((64, 1), bos), src, torch.full((64, 1), eos)], dim=1)
        logits = model(src, tgt[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tgt[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    src = torch.randint(3, vocab, (100, length), generator=torch.Generator().manual_seed(123))
    out = model.generate(src, length + 1, bos_id=bos, eos_id=eos)
    exact = (out[:, :length] == src).all(1).float().mean().item()
    assert exact >= 0.95, f"greedy copy exact match {exact:.2f}"
    assert torch.all(out[:, length] == eos)


@pytest.mark.parametrize("spec, fed", [("gpt_tiny", 5), ("transformer_tiny", 1)])
@pytest.mark.parametrize("beams", [1, 2])
def test_generate_reserves_the_caches_once_for_every_new_token(spec, fed, beams, monkeypatch):
    torch.manual_seed(0)
    model = plugformer.build(spec, vocab=VOCAB).eval()
    made = []
    new_caches = model.new_caches

    def recording():
        made.extend(new_caches())
        return made

    monkeypatch.setattr(model, "new_caches", recording)
    inputs = torch.randint(3, VOCAB, (2, 5))
    extra = {"bos_id": 1} if model.kind == "encdec" else {}
    out = model.generate(inputs, 9, beams=beams, **extra)
    assert out.shape == (2, 9)
    for cache in made:  # the prompt (or bos) and 8 fed tokens, in room for 9 made at the start
        assert len(cache.self_attn) == fed + 8 and cache.self_attn.capacity == fed + 9  # doubling: 16 or 20
