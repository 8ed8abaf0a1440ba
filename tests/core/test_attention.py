"""MultiHeadAttention: projections and heads around a kernel, checked against nn.MultiheadAttention;
caches and positional hooks checked against the uncached computation."""

import pytest
import torch
from torch import nn

import plugformer
from plugformer.core.attention import KVCache, MultiHeadAttention, Positions, repeat_kv
from plugformer.core.interfaces import PositionalEncoding
from plugformer.core.masks import padding_to_attend

D, H, B = 32, 4, 2
TOL = 1e-5


def mha(kernel="fused", *, kv_heads=H, bias=True, seed=0) -> MultiHeadAttention:
    torch.manual_seed(seed)
    return MultiHeadAttention(
        d_model=D, heads=H, kv_heads=kv_heads, head_dim=D // H,
        kernel=plugformer.build_part("attention", kernel, d_model=D, heads=H), bias=bias,
    )


def copy_from_torch(ours: MultiHeadAttention, theirs: nn.MultiheadAttention) -> None:
    with torch.no_grad():
        for proj, w, b in zip(
            (ours.q_proj, ours.k_proj, ours.v_proj), theirs.in_proj_weight.chunk(3), theirs.in_proj_bias.chunk(3)
        ):
            proj.weight.copy_(w)
            proj.bias.copy_(b)
        ours.out_proj.load_state_dict(theirs.out_proj.state_dict())


@pytest.mark.parametrize("kernel", ["dense", "fused"])
def test_self_attention_matches_nn_multihead_attention(kernel):
    torch.manual_seed(1)
    theirs = nn.MultiheadAttention(D, H, batch_first=True)
    ours = mha(kernel)
    copy_from_torch(ours, theirs)
    x = torch.randn(B, 6, D)
    padding = torch.tensor([[False] * 6, [False] * 4 + [True] * 2])
    causal = nn.Transformer.generate_square_subsequent_mask(6).isinf()
    expected, _ = theirs(x, x, x, key_padding_mask=padding, attn_mask=causal, need_weights=False)
    actual = ours(x, mask=padding_to_attend(padding), causal=True)
    assert (actual - expected).abs().max() <= TOL


@pytest.mark.parametrize("kernel", ["dense", "fused"])
def test_cross_attention_matches_nn_multihead_attention(kernel):
    torch.manual_seed(2)
    theirs = nn.MultiheadAttention(D, H, batch_first=True)
    ours = mha(kernel)
    copy_from_torch(ours, theirs)
    x, memory = torch.randn(B, 3, D), torch.randn(B, 7, D)
    padding = torch.tensor([[False] * 7, [False] * 2 + [True] * 5])
    expected, _ = theirs(x, memory, memory, key_padding_mask=padding, need_weights=False)
    actual = ours(x, memory, mask=padding_to_attend(padding))
    assert (actual - expected).abs().max() <= TOL


def test_projection_gradients_match_nn_multihead_attention():
    torch.manual_seed(4)
    theirs = nn.MultiheadAttention(D, H, batch_first=True)
    ours = mha()
    copy_from_torch(ours, theirs)
    x, memory = torch.randn(B, 5, D), torch.randn(B, 6, D)
    for source in (x, memory):  # self-attention (q, k, v packed), cross-attention (k, v packed)
        theirs.zero_grad(), ours.zero_grad()
        theirs(x, source, source, need_weights=False)[0].square().sum().backward()
        ours(x, None if source is x else source).square().sum().backward()
        expected = theirs.in_proj_weight.grad.chunk(3)
        for proj, grad in zip((ours.q_proj, ours.k_proj, ours.v_proj), expected):
            assert (proj.weight.grad - grad).abs().max() <= 1e-4


def test_hooked_or_wrapped_projections_are_still_called():
    attention = mha()
    calls = []
    attention.k_proj.register_forward_hook(lambda module, args, out: calls.append("k"))
    attention.v_proj = nn.Sequential(attention.v_proj)  # e.g. an adapter around the projection
    x = torch.randn(B, 4, D)
    expected = mha()(x)
    assert (attention(x) - expected).abs().max() <= TOL
    assert calls == ["k"]


def test_state_dict_keys_do_not_depend_on_the_kernel():
    expected = {f"{p}.{t}" for p in ("q_proj", "k_proj", "v_proj", "out_proj") for t in ("weight", "bias")}
    assert set(mha("dense").state_dict()) == expected
    assert set(mha("fused").state_dict()) == expected
    mha("fused").load_state_dict(mha("dense", seed=3).state_dict(), strict=True)


def test_bias_false_removes_projection_biases():
    assert all(not name.endswith("bias") for name in mha(bias=False).state_dict())


def test_grouped_query_projections_are_narrower():
    attention = mha(kv_heads=2)
    assert attention.k_proj.weight.shape == (2 * D // H, D)
    assert attention.v_proj.weight.shape == (2 * D // H, D)
    assert attention(torch.randn(B, 5, D)).shape == (B, 5, D)


def test_heads_must_be_a_multiple_of_kv_heads():
    with pytest.raises(ValueError, match=r"heads \(4\) must be a multiple of kv_heads \(3\)"):
        mha(kv_heads=3)


def test_repeat_kv_shares_each_head_with_its_group():
    x = torch.randn(B, 2, 5, 3)
    out = repeat_kv(x, 6)
    assert out.shape == (B, 6, 5, 3)
    for h in range(6):
        assert torch.equal(out[:, h], x[:, h // 3])
    assert repeat_kv(x, 2) is x


@pytest.mark.parametrize("kernel", ["dense", "fused"])
@pytest.mark.parametrize("kv_heads", [H, 2])
def test_incremental_decoding_with_a_cache_equals_the_full_pass(kernel, kv_heads):
    attention = mha(kernel, kv_heads=kv_heads)
    x = torch.randn(B, 7, D)
    full = attention(x, causal=True)
    cache = KVCache()
    steps = [attention(x[:, :3], causal=True, cache=cache)]  # a prompt, then one token at a time
    steps += [attention(x[:, t : t + 1], causal=True, cache=cache) for t in range(3, 7)]
    assert len(cache) == 7
    assert (torch.cat(steps, dim=1) - full).abs().max() <= TOL


def test_cross_attention_cache_is_computed_once():
    attention = mha()
    memory = torch.randn(B, 5, D)
    cache = KVCache(static=True)
    first = attention(torch.randn(B, 1, D), memory, cache=cache)
    k = cache.k
    x = torch.randn(B, 1, D)
    second = attention(x, memory, cache=cache)
    assert cache.k is k and first.shape == second.shape
    assert (second - attention(x, memory)).abs().max() <= TOL


class ShiftAndDistance(PositionalEncoding):
    """A test encoding that uses both attention hooks with absolute positions: shifts q and k by
    their position and biases scores by -slope * |i - j|."""

    uses_rotate = True
    uses_bias = True

    def __init__(self):
        super().__init__()
        self.seen = []

    def rotate(self, q, k, q_pos, k_pos):
        self.seen.append((q_pos.tolist(), k_pos.tolist()))
        return q + 0.1 * q_pos[:, None], k - 0.05 * k_pos[:, None]

    def score_bias(self, q_pos, k_pos):
        slopes = torch.tensor([0.5, 0.25, 0.125, 0.0625])
        return -slopes[:, None, None] * (q_pos - k_pos).abs().float()


@pytest.mark.parametrize("kernel", ["dense", "fused"])
def test_positional_hooks_see_absolute_positions_when_decoding(kernel):
    attention = mha(kernel)
    pe = ShiftAndDistance()
    x = torch.randn(B, 6, D)
    full = attention(x, causal=True, positions=Positions(pe, 0))
    assert pe.seen == [(list(range(6)), list(range(6)))]
    cache = KVCache()
    pe.seen.clear()
    first = attention(x[:, :4], causal=True, positions=Positions(pe, 0), cache=cache)
    rest = [attention(x[:, t : t + 1], causal=True, positions=Positions(pe, t), cache=cache) for t in (4, 5)]
    assert pe.seen == [([0, 1, 2, 3], [0, 1, 2, 3]), ([4], [4]), ([5], [5])]
    assert (torch.cat([first, *rest], dim=1) - full).abs().max() <= TOL


def test_kernel_parameters_live_under_kernel():
    if "cosine" not in plugformer.registry.names("attention"):
        pytest.skip("the example plugin (cosine attention) is not installed")
    keys = set(mha("cosine").state_dict()) - set(mha("dense").state_dict())
    assert keys and all(key.startswith("kernel.") for key in keys)
