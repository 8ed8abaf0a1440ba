"""A left-padded batch through ``bra`` in a causal LM, on both CPU paths: the prefill logits
and every cached decoding step of each row equal those of the row alone, with a positional
score bias (ALiBi, T5's buckets) whose distances must survive the alignment of regions to token positions."""

from __future__ import annotations

import pytest
import torch

from plugformer import build


@pytest.mark.parametrize("pe", ["alibi", "rope", "sinusoidal"])
@torch.no_grad()
def test_left_padded_prompts_decode_as_each_prompt_alone(pe, path):
    torch.manual_seed(0)
    model = build(f"gpt_tiny(attn=bra(region=4, topk=2, {path.spec}), pe={pe}, dropout=0.0)").eval()
    generator = torch.Generator().manual_seed(1)
    rows = [torch.randint(1, 200, (n,), generator=generator).tolist() for n in (20, 19, 18, 17)]
    ids, padding = model.pad_inputs(rows)
    logits = model(ids, key_padding_mask=padding, left_padding=padding.sum(1))
    batch = model.generate(ids, 10, prompt_padding_mask=padding)
    for i, row in enumerate(rows):
        prompt = torch.tensor([row])
        torch.testing.assert_close(logits[i, ~padding[i]], model(prompt)[0], atol=1e-5, rtol=1e-5)
        assert torch.equal(batch[i], model.generate(prompt, 10)[0]), f"row {i}"
        steps = model(torch.cat([prompt, batch[i : i + 1]], 1))[0, len(row) - 1 : -1]
        full = torch.cat([ids[i : i + 1], batch[i : i + 1]], 1)
        mask = torch.cat([padding[i : i + 1], torch.zeros(1, 10, dtype=torch.bool)], 1)
        padded = model(full, key_padding_mask=mask, left_padding=padding[i : i + 1].sum(1))[0, ids.shape[1] - 1 : -1]
        torch.testing.assert_close(padded, steps, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("pe", ["alibi", "t5_bias", "rope"])
@torch.no_grad()
def test_cached_steps_of_a_left_padded_batch_give_the_logits_of_each_row_alone(pe, path):
    """Prefill then five one-token steps with KV caches (queries fewer than keys)."""
    torch.manual_seed(0)
    model = build(f"gpt_tiny(attn=bra(region=4, topk=2, {path.spec}), pe={pe}, dropout=0.0)").eval()
    generator = torch.Generator().manual_seed(2)
    rows = [torch.randint(1, 200, (n,), generator=generator).tolist() for n in (13, 10, 7)]
    steps = torch.randint(1, 200, (3, 5), generator=generator)
    ids, padding = model.pad_inputs(rows)
    lead = padding.sum(1)
    caches = model.new_caches()
    model(ids, key_padding_mask=padding, caches=caches, left_padding=lead)
    for t in range(5):
        padding = torch.cat([padding, torch.zeros(3, 1, dtype=torch.bool)], 1)
        batch = model(steps[:, t : t + 1], key_padding_mask=padding, caches=caches, left_padding=lead)[:, 0]
        for i, row in enumerate(rows):
            alone = model(torch.cat([torch.tensor([row]), steps[i : i + 1, : t + 1]], 1))[0, -1]
            torch.testing.assert_close(batch[i], alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("lq", [1, 3])
def test_a_cached_step_of_a_left_padded_row_routes_as_the_row_alone(lq, path):
    """The step's queries, set at their key positions in the rolled row, choose the regions of
    the row alone, numbered from the first whole region of pads."""
    from plugformer.plugins.bra import BiLevelRoutingAttention

    torch.manual_seed(3)
    kernel = BiLevelRoutingAttention(heads=2, head_dim=8, region=4, topk=2, **path)
    tokens = 21
    k, v = torch.randn(2, 1, 2, tokens, 8).unbind(0)
    q = torch.randn(1, 2, lq, 8)
    for lead in (1, 3, 6):
        mask = torch.arange(lead + tokens)[None, None, None, :] >= lead  # (1, 1, 1, Lk)
        k_pad, v_pad = (torch.cat([torch.zeros(1, 2, lead, 8), x], 2) for x in (k, v))
        alone = kernel.route(q, k, causal=True)
        padded = kernel.route(q, k_pad, mask=mask, causal=True)
        assert torch.equal(padded, torch.where(alone >= 0, alone + lead // 4, -1)), f"lead {lead}"
        torch.testing.assert_close(kernel(q, k_pad, v_pad, mask=mask, causal=True),
                                   kernel(q, k, v, causal=True), atol=1e-6, rtol=0)
