"""Norms: ``rmsnorm`` and ``qk_norms`` against x / sqrt(mean(x^2) + eps) * g; the old
``plugformer.plugins.rmsnorm`` / ``block_variants`` import paths warn."""

from __future__ import annotations

import pytest
import torch

import plugformer
from plugformer import SpecError, build, build_part
from plugformer.core.attention import MultiHeadAttention
from plugformer.core.context import BuildContext
from plugformer.plugins.dense import DenseAttention
from plugformer.plugins.norms import RMSNorm, qk_norms


def formula(x: torch.Tensor, gain: torch.Tensor, eps: float) -> torch.Tensor:
    rms = (x.double().pow(2).mean(-1, keepdim=True) + eps).sqrt()
    return (x.double() / rms * gain.double()).to(x.dtype)


@pytest.mark.parametrize("eps", [1e-6, 1e-2])
def test_matches_the_formula(eps):
    torch.manual_seed(0)
    norm = build_part("norm", f"rmsnorm(eps={eps})", d_model=16, heads=2)
    with torch.no_grad():
        norm.weight.normal_()
    x = torch.randn(3, 5, 16) * 4 + 1
    torch.testing.assert_close(norm(x), formula(x, norm.weight, eps), atol=1e-5, rtol=1e-5)


def test_no_mean_subtraction_and_no_bias():
    norm = RMSNorm(4)
    assert [name for name, _ in norm.named_parameters()] == ["weight"]
    x = torch.full((1, 4), 3.0)
    torch.testing.assert_close(norm(x), torch.ones(1, 4), atol=1e-5, rtol=0)  # LayerNorm gives 0


def test_half_precision_keeps_dtype():
    torch.manual_seed(1)
    x = torch.randn(2, 8) * 300
    out = RMSNorm(8, dtype=torch.float16)(x.half())
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), formula(x, torch.ones(8), 1e-6).float(), atol=5e-3, rtol=5e-3)


def test_gradients_reach_the_gain():
    norm = RMSNorm(8)
    norm(torch.randn(3, 8)).pow(2).sum().backward()
    assert norm.weight.grad is not None and norm.weight.grad.abs().sum() > 0


def test_factory_checks_eps():
    with pytest.raises(SpecError, match="eps"):
        build_part("norm", "rmsnorm(eps=-1.0)", d_model=8, heads=2)


def test_in_a_model_and_describe():
    model = build("gpt_tiny(norm=rmsnorm)")
    assert isinstance(model.decoder.norm, RMSNorm)
    assert all(isinstance(layer.ffn_norm, RMSNorm) for layer in model.decoder.layers)
    described = plugformer.registry.describe("norm", "rmsnorm")
    assert described.summary.startswith("Root-mean-square norm")
    assert [a.name for a in described.args] == ["eps"]


def test_qk_norms_normalise_each_head_over_head_dim():
    torch.manual_seed(2)
    ctx = BuildContext(d_model=32, heads=4)
    q_norm, k_norm = qk_norms(ctx)
    assert q_norm.weight.shape == k_norm.weight.shape == (ctx.head_dim,)
    with torch.no_grad():
        q_norm.weight.normal_()
        k_norm.weight.normal_()
    attention = MultiHeadAttention(
        d_model=32, heads=4, kv_heads=2, head_dim=8, kernel=DenseAttention(), q_norm=q_norm, k_norm=k_norm
    )
    x = torch.randn(2, 6, 32)
    q = formula(attention.q_proj(x).unflatten(-1, (4, 8)), q_norm.weight, 1e-6).transpose(1, 2)
    k = formula(attention.k_proj(x).unflatten(-1, (2, 8)), k_norm.weight, 1e-6).transpose(1, 2)
    v = attention.v_proj(x).unflatten(-1, (2, 8)).transpose(1, 2)
    expected = attention.out_proj(DenseAttention()(q, k, v).transpose(1, 2).flatten(2))
    torch.testing.assert_close(attention(x), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("old, new, name", [
    ("rmsnorm", "norms", "RMSNorm"),
    ("rmsnorm", "norms", "qk_norms"),
    ("block_variants", "blocks", "ParallelBlock"),
    ("block_variants", "blocks", "sandwich"),
])
def test_moved_names_still_import_from_their_old_module_with_a_warning(old, new, name):
    import importlib

    old_module = importlib.import_module(f"plugformer.plugins.{old}")
    with pytest.warns(DeprecationWarning, match=rf"plugins\.{old}\.{name} moved to plugformer\.plugins\.{new}"):
        moved = getattr(old_module, name)
    assert moved is getattr(importlib.import_module(f"plugformer.plugins.{new}"), name)
    with pytest.raises(AttributeError, match="no attribute 'missing'"):
        old_module.missing
