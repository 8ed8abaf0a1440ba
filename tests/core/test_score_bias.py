"""The positional score bias reaches kernels as ``score_bias=``; kernels written before the
rename (``forward(..., bias=)``) keep working for one release, with a DeprecationWarning naming
the kernel and the new name. ``BuildContext.bias`` likewise became ``score_bias``."""

from __future__ import annotations

import warnings

import pytest
import torch

import plugformer
from plugformer.core.attention import MultiHeadAttention, Positions, score_bias_grid
from plugformer.core.context import BuildContext
from plugformer.core.interfaces import AttentionKernel
from plugformer.core.masks import with_causal
from plugformer.plugins.alibi import ALiBiPositions
from plugformer.plugins.dense import DenseAttention
from plugformer.registry.registry import Registry

D, H = 32, 4


class LegacyKernel(AttentionKernel):
    """A third-party kernel written against 0.1: the score bias arrives as ``bias=``. Plain
    softmax attention written out here, the reference for the shim."""

    supports_bias = True

    def forward(self, q, k, v, *, mask=None, causal=False, bias=None):
        scores = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5
        lq, lk = q.shape[-2], k.shape[-2]
        if bias is not None:
            scores = scores + bias(torch.arange(lq)[:, None], torch.arange(lk)[None, :])
        allowed = with_causal(mask, causal, lq, lk, q.device)
        if allowed is not None:
            scores = scores.masked_fill(~allowed, float("-inf"))
        return scores.softmax(-1) @ v


def legacy(ctx: BuildContext) -> LegacyKernel:
    """A kernel that still takes bias=."""
    return LegacyKernel()


def mha(kernel) -> MultiHeadAttention:
    torch.manual_seed(0)
    return MultiHeadAttention(d_model=D, heads=H, kv_heads=H, head_dim=D // H, kernel=kernel)


def test_a_kernel_taking_bias_is_called_with_it_and_warned_about_once_at_build():
    with pytest.warns(DeprecationWarning, match=r"LegacyKernel takes the positional score bias as .*bias=.*score_bias="):
        old = mha(LegacyKernel())
    new = mha(DenseAttention())
    pe = ALiBiPositions(heads=H)
    x = torch.randn(2, 7, D)
    expected = new(x, causal=True, positions=Positions(pe, 0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # detected once, at build: calls do not warn again
        got = old(x, causal=True, positions=Positions(pe, 0))
    torch.testing.assert_close(got, expected)
    assert not torch.allclose(got, old(x, causal=True))  # the bias did reach the kernel


def test_a_legacy_kernel_builds_into_a_model_through_the_registry():
    registry = Registry()
    registry.load_plugins()
    registry.add("attention", "legacy", legacy)
    with pytest.warns(DeprecationWarning, match="LegacyKernel"):
        model = plugformer.build("gpt_tiny(attn=legacy, pe=alibi, vocab=40)", registry=registry).eval()
    torch.manual_seed(0)
    reference = plugformer.build("gpt_tiny(attn=dense, pe=alibi, vocab=40)").eval()
    reference.load_state_dict(model.state_dict())
    ids = torch.randint(0, 40, (2, 9))
    torch.testing.assert_close(model(ids), reference(ids))


def test_swapping_in_a_legacy_kernel_after_build_is_detected():
    attention = mha(DenseAttention())
    attention.kernel = LegacyKernel()
    pe = ALiBiPositions(heads=H)
    x = torch.randn(1, 5, D)
    with pytest.warns(DeprecationWarning, match="LegacyKernel"):
        got = attention(x, positions=Positions(pe, 0))
    attention.kernel = DenseAttention()
    torch.testing.assert_close(got, attention(x, positions=Positions(pe, 0)))


def test_score_bias_grid_is_the_bias_at_every_pair():
    pe = ALiBiPositions(heads=H)
    grid = score_bias_grid(pe.score_bias, 3, 5, torch.device("cpu"))
    assert grid.shape == (H, 3, 5)
    for i in range(3):
        for j in range(5):
            assert torch.equal(grid[:, i, j], pe.score_bias(torch.tensor(i), torch.tensor(j)))


def test_build_context_bias_is_a_deprecated_name_of_score_bias():
    ctx = BuildContext(score_bias=True)
    with pytest.warns(DeprecationWarning, match="BuildContext.bias is now BuildContext.score_bias"):
        assert ctx.bias is True
    with pytest.warns(DeprecationWarning, match="score_bias"):
        assert ctx.evolve(bias=False).score_bias is False
    with pytest.warns(DeprecationWarning, match="score_bias"):
        plugformer.build_part("attention", "dense", d_model=D, heads=H, bias=True)


class Unbiased(LegacyKernel):
    supports_bias = False

    def forward(self, q, k, v, *, mask=None, causal=False, score_bias=None):
        return super().forward(q, k, v, mask=mask, causal=causal)


def unbiased(ctx: BuildContext) -> Unbiased:
    """A kernel that cannot take a score bias."""
    return Unbiased()


def test_context_score_bias_refuses_a_kernel_without_the_capability():
    registry = Registry()
    registry.load_plugins()
    registry.add("attention", "unbiased", unbiased)
    plugformer.build_part("attention", "unbiased", registry=registry, d_model=D, heads=H)
    with pytest.raises(plugformer.SpecError, match="cannot take the score bias"):
        plugformer.build_part("attention", "unbiased", registry=registry, d_model=D, heads=H, score_bias=True)
    with pytest.raises(plugformer.SpecError, match="cannot take the score bias"):
        plugformer.build("gpt_tiny(attn=unbiased, pe=alibi)", registry=registry)
