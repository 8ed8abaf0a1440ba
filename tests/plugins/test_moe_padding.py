"""``moe``: padding takes no part in routing statistics, capacity or the balancing loss, and
capacity serves first choices before second choices when one expert sees both. Expected values
are written out here (which assignment is served), not taken from the library."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from plugformer import build, build_part


def _moe(capacity_factor=None, top_k=1, n_experts=4, d_model=8):
    torch.manual_seed(0)
    cap = "none" if capacity_factor is None else capacity_factor
    return build_part("feedforward", f"moe(n_experts={n_experts}, top_k={top_k}, expert=relu, d_ff=16, "
                      f"capacity_factor={cap})", d_model=d_model, heads=1)


@pytest.mark.parametrize("capacity_factor", [None, 1.0, 0.5])
@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_changes_nothing_the_real_tokens_see(capacity_factor, side):
    moe = _moe(capacity_factor, top_k=2)
    torch.manual_seed(1)
    real = torch.randn(1, 6, 8)
    noise = torch.randn(1, 10, 8) * 5
    padded = torch.cat([noise, real], 1) if side == "left" else torch.cat([real, noise], 1)
    token_mask = torch.zeros(1, 16, dtype=torch.bool)
    token_mask[0, 10:] = side == "left"
    token_mask[0, :6] = side == "right"
    alone = moe(real)
    stats = (moe.aux_loss.clone(), moe.last_tokens_per_expert.clone(), int(moe.last_dropped))
    out = moe(padded, token_mask=token_mask)
    torch.testing.assert_close(out[token_mask].view(1, 6, 8), alone)
    assert torch.equal(out[~token_mask], torch.zeros(10, 8))
    torch.testing.assert_close(moe.aux_loss, stats[0])
    assert torch.equal(moe.last_tokens_per_expert, stats[1])
    assert int(moe.last_dropped) == stats[2]


def test_in_a_model_padding_takes_no_capacity_and_no_aux_loss():
    """The issue's case: a 6-token source alone vs right-padded to 16."""
    torch.manual_seed(0)
    model = build("transformer_tiny(ffn=moe(n_experts=4, top_k=1, capacity_factor=1.0), dropout=0.0)").eval()
    src = torch.randint(1, 200, (1, 6))
    alone = model.encode(src)
    aux_alone = model.aux_loss()
    padded = torch.cat([src, torch.full((1, 10), 7)], 1)
    padding = torch.arange(16)[None] >= 6
    out = model.encode(padded, src_key_padding_mask=padding)
    torch.testing.assert_close(out[:, :6], alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.aux_loss(), aux_alone)


def test_capacity_serves_first_choices_before_second_choices_of_earlier_tokens():
    """Three experts, top-2, capacity ceil(0.75 * 4 * 2 / 3) = 2. Expert 2 is the second choice
    of tokens 0 and 1 and the first choice of tokens 2 and 3: priority serves tokens 2 and 3
    and drops the second choices of tokens 0 and 1 (token order would do the opposite)."""
    moe = _moe(0.75, top_k=2, n_experts=3, d_model=3)
    with torch.no_grad():
        moe.router.weight.copy_(torch.eye(3))
    logits = torch.tensor([[0.0, 3.0, 1.0],   # token 0: 1, then 2
                           [3.0, 0.0, 1.0],   # token 1: 0, then 2
                           [0.0, 1.0, 3.0],   # token 2: 2, then 1
                           [1.0, 0.0, 3.0]])  # token 3: 2, then 0
    served = {0: [1], 1: [0], 2: [2, 1], 3: [2, 0]}  # (token -> experts), written out
    x = logits[None]
    out = moe(x)[0]
    probs = F.softmax(logits, -1)
    for token, experts in served.items():
        top = probs[token].topk(2).values.sum()
        expected = sum(probs[token, e] / top * moe.experts[e](x[0, token : token + 1])[0] for e in experts)
        torch.testing.assert_close(out[token], expected)
    assert int(moe.last_dropped) == 2
