"""``moe``: against a token-by-token reference, the plain FFN, and Switch's balancing loss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import plugformer
from plugformer import SpecError, build, build_part
from plugformer.plugins import gated_ffn as gated_plugin
from plugformer.plugins import moe as moe_plugin
from plugformer.plugins.moe import MixtureOfExperts


@pytest.fixture(autouse=True, scope="module")
def registered():
    """Registers the plugins while they are not built-ins yet (see BUILTIN_PLUGINS)."""
    loaded = {p.name for p in plugformer.registry.plugins}
    added = [
        plugformer.registry.register_plugin(m)
        for m in (gated_plugin, moe_plugin)
        if m.__name__ not in loaded
    ]
    yield
    for name in reversed(added):
        plugformer.registry.unregister_plugin(name)


def reference(moe: MixtureOfExperts, x: torch.Tensor, capacity: int | None = None) -> torch.Tensor:
    """Token by token: softmax router, top-k, weighted sum of the chosen experts. With a
    capacity, experts take first choices of all tokens in order, then second choices, ..."""
    flat = x.reshape(-1, x.shape[-1])
    probs = F.softmax(flat @ moe.router.weight.t(), dim=-1)
    out = torch.zeros_like(flat)
    load = [0] * moe.n_experts
    choices = [probs[t].topk(moe.top_k) for t in range(len(flat))]
    for slot in range(moe.top_k):
        for t, (top_probs, top_experts) in enumerate(choices):
            e = int(top_experts[slot])
            weight = top_probs[slot] / top_probs.sum() if moe.renormalize else top_probs[slot]
            if capacity is not None and load[e] >= capacity:
                continue
            load[e] += 1
            out[t] += weight * moe.experts[e](flat[t : t + 1])[0]
    return out.view_as(x)


@pytest.mark.parametrize("expert", ["relu", "gelu", "swiglu"])
@pytest.mark.parametrize("top_k, renormalize", [(1, True), (2, True), (2, False), (3, True)])
def test_matches_the_token_by_token_reference(expert, top_k, renormalize):
    torch.manual_seed(0)
    moe = build_part(
        "feedforward",
        f"moe(n_experts=4, top_k={top_k}, expert={expert}, d_ff=24, renormalize={str(renormalize).lower()})",
        d_model=16, heads=2,
    )
    x = torch.randn(3, 7, 16)
    torch.testing.assert_close(moe(x), reference(moe, x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "expert, plain", [("relu", "relu(d_ff=32, bias=false)"), ("swiglu", "swiglu(d_ff=32)")]
)
def test_one_expert_top_1_equals_the_plain_ffn(expert, plain):
    torch.manual_seed(1)
    spec = f"moe(n_experts=1, top_k=1, expert={expert}, d_ff=32)"
    moe = build_part("feedforward", spec, d_model=16, heads=2)
    ffn = build_part("feedforward", plain, d_model=16, heads=2)
    ffn.load_state_dict(moe.experts[0].state_dict())
    x = torch.randn(2, 9, 16)
    torch.testing.assert_close(moe(x), ffn(x))


def test_every_assignment_reaches_an_existing_expert():
    torch.manual_seed(2)
    moe = build_part("feedforward", "moe(n_experts=8, top_k=2)", d_model=16, heads=2)
    x = torch.randn(4, 10, 16)
    _, chosen, _ = moe.route(x.reshape(-1, 16))
    assert chosen.min() >= 0 and chosen.max() < 8
    moe(x)
    assert moe.last_tokens_per_expert.shape == (8,)
    assert moe.last_tokens_per_expert.sum() == 40 * 2
    assert torch.equal(moe.last_tokens_per_expert, torch.bincount(chosen.flatten(), minlength=8))
    assert moe.last_dropped == 0


def test_aux_loss_is_one_for_a_uniform_router():
    torch.manual_seed(3)
    moe = build_part("feedforward", "moe(n_experts=4, top_k=2)", d_model=16, heads=2)
    with torch.no_grad():
        moe.router.weight.zero_()
    moe(torch.randn(2, 8, 16))
    assert moe.aux_loss.dim() == 0
    torch.testing.assert_close(moe.aux_loss, torch.tensor(1.0))


def test_aux_loss_is_n_experts_when_one_expert_takes_everything():
    moe = build_part("feedforward", "moe(n_experts=4, top_k=1)", d_model=4, heads=1)
    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.weight[2, 0] = 100.0
    moe(torch.ones(1, 6, 4))
    torch.testing.assert_close(moe.aux_loss, torch.tensor(4.0), atol=1e-4, rtol=0)
    assert moe.last_tokens_per_expert.tolist() == [0, 0, 6, 0]


def test_aux_loss_is_switchs_formula_and_trains_the_router():
    torch.manual_seed(4)
    moe = build_part("feedforward", "moe(n_experts=4, top_k=2)", d_model=8, heads=1)
    x = torch.randn(3, 5, 8)
    moe(x)
    probs = F.softmax(x.reshape(-1, 8) @ moe.router.weight.t(), -1)
    share = torch.bincount(probs.topk(2).indices.flatten(), minlength=4) / (15 * 2)
    torch.testing.assert_close(moe.aux_loss, 4 * (share * probs.mean(0)).sum())
    moe.aux_loss.backward()
    assert moe.router.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("capacity_factor", [0.5, 1.0, 1.25])
def test_capacity_drops_in_the_documented_order(capacity_factor):
    torch.manual_seed(5)
    moe = build_part(
        "feedforward", f"moe(n_experts=4, top_k=2, expert=relu, d_ff=16, capacity_factor={capacity_factor})",
        d_model=8, heads=1,
    )
    with torch.no_grad():
        moe.router.weight[0] += 1.0  # crowd expert 0
    x = torch.randn(2, 12, 8).abs()
    capacity = math.ceil(capacity_factor * 12 * 2 / 4)  # each sequence is its own group
    expected = torch.stack([reference(moe, row, capacity) for row in x])
    over = 0
    for row in x:
        moe(row[None])
        over += int((moe.last_tokens_per_expert - capacity).clamp(min=0).sum())
    torch.testing.assert_close(moe(x), expected, atol=1e-5, rtol=1e-5)
    assert moe.last_dropped == over


def test_gradients_reach_router_and_experts():
    torch.manual_seed(6)
    moe = build_part("feedforward", "moe(n_experts=4, top_k=2)", d_model=16, heads=2)
    moe(torch.randn(4, 16, 16)).pow(2).sum().backward()
    assert moe.router.weight.grad.abs().sum() > 0
    used = moe.last_tokens_per_expert > 0
    for expert, is_used in zip(moe.experts, used):
        assert (expert.down_proj.weight.grad is not None) == bool(is_used)


def test_factory_checks_arguments():
    with pytest.raises(SpecError, match="top_k"):
        build_part("feedforward", "moe(n_experts=2, top_k=3)", d_model=8, heads=1)
    with pytest.raises(SpecError, match="capacity_factor"):
        build_part("feedforward", "moe(capacity_factor=0.0)", d_model=8, heads=1)
    with pytest.raises(SpecError, match="expert"):
        build_part("feedforward", "moe(expert=tanh)", d_model=8, heads=1)


def test_in_a_model_learns_with_the_aux_loss_what_its_zeroed_twin_cannot(learned_losses, zeroed):
    """A random table of (previous, current) token needs the feed-forward's interaction; the
    twin whose MoE outputs zeros reaches a clearly higher loss."""
    models = []
    for _ in range(2):
        torch.manual_seed(7)
        models.append(build("gpt_tiny(ffn=moe(n_experts=4, d_ff=64), layers=1, pe=rope, vocab=16)"))
    zeroed([layer.ffn for layer in models[1].decoder.layers])
    working, broken = learned_losses(*models, "pairs", 150, vocab=16, aux_weight=0.01)
    assert working < broken - 0.4, (working, broken)
    described = plugformer.registry.describe("feedforward", "moe")
    assert described.args[0].name == "n_experts" and described.args[0].default == 8


@pytest.mark.parametrize("capacity_factor", [None, 0.5])
def test_compiles_as_one_graph_and_matches_the_reference_with_padding(capacity_factor):
    torch.manual_seed(8)
    cap = "none" if capacity_factor is None else capacity_factor
    moe = build_part(
        "feedforward", f"moe(n_experts=4, top_k=2, expert=relu, d_ff=16, capacity_factor={cap})",
        d_model=8, heads=1,
    )
    with torch.no_grad():
        moe.router.weight[0] += 1.0  # crowd expert 0
    x = torch.randn(2, 12, 8).abs()
    token_mask = torch.ones(2, 12, dtype=torch.bool)
    token_mask[1, :5] = False  # row 1 is left-padded
    expected = torch.zeros_like(x)
    for row in range(2):
        real = x[row][token_mask[row]][None]
        n = real.shape[1]
        capacity = None if capacity_factor is None else math.ceil(capacity_factor * n * 2 / 4)
        expected[row][token_mask[row]] = reference(moe, real, capacity)[0]
    eager_out = moe(x, token_mask=token_mask)
    eager_stats = (moe.aux_loss, moe.last_tokens_per_expert, moe.last_dropped)
    torch._dynamo.reset()
    compiled = torch.compile(moe, backend="eager", fullgraph=True)
    out = compiled(x, token_mask=token_mask)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(eager_out, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(moe.aux_loss, eager_stats[0])
    assert torch.equal(moe.last_tokens_per_expert, eager_stats[1])
    assert int(moe.last_dropped) == int(eager_stats[2])
    assert capacity_factor is None or int(moe.last_dropped) > 0


def test_float64_input_routes_in_float64():
    torch.manual_seed(9)
    moe = build_part("feedforward", "moe(n_experts=4, top_k=2, expert=gelu, d_ff=16)", d_model=8, heads=1)
    moe = moe.double()
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    probs, _, weights = moe.route(x.reshape(-1, 8))
    assert probs.dtype == weights.dtype == torch.float64
    out = moe(x)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, reference(moe, x))  # float64 tolerances
