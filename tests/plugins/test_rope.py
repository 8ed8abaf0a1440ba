"""``rope``: against the complex-number form of RoPE, its relative property, and in models."""

from __future__ import annotations

import pytest
import torch

import plugformer
from plugformer import SpecError, build, build_part
from plugformer.plugins import rope as rope_plugin
from plugformer.plugins.rope import RotaryPositions


@pytest.fixture(autouse=True, scope="module")
def registered():
    """Registers the plugin while it is not a built-in yet (see BUILTIN_PLUGINS)."""
    loaded = {p.name for p in plugformer.registry.plugins}
    added = [
        plugformer.registry.register_plugin(m) for m in (rope_plugin,) if m.__name__ not in loaded
    ]
    yield
    for name in added:
        plugformer.registry.unregister_plugin(name)


def complex_rope(x: torch.Tensor, positions: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """RoPE as the paper writes it: (x_2i + i x_2i+1) * e^(i m theta_i), theta_i = base^(-2i/d)."""
    d = x.shape[-1]
    theta = base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    rotation = torch.polar(torch.ones(len(positions), d // 2, dtype=torch.float64),
                           positions.double()[:, None] * theta)  # (L, d/2) complex
    as_complex = torch.view_as_complex(x.double().unflatten(-1, (-1, 2)).contiguous())
    return torch.view_as_real(as_complex * rotation).flatten(-2).to(x.dtype)


def test_matches_the_complex_number_form():
    torch.manual_seed(0)
    pe = RotaryPositions(head_dim=16)
    q, k = torch.randn(2, 4, 7, 16), torch.randn(2, 2, 9, 16)
    q_pos, k_pos = torch.arange(5, 12), torch.arange(3, 12)
    q_rot, k_rot = pe.rotate(q, k, q_pos, k_pos)
    torch.testing.assert_close(q_rot, complex_rope(q, q_pos), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(k_rot, complex_rope(k, k_pos), atol=1e-5, rtol=1e-5)


def test_half_layout_is_interleaved_on_permuted_features():
    torch.manual_seed(1)
    d = 8
    pairs_adjacent = torch.stack([torch.arange(d // 2), torch.arange(d // 2) + d // 2], -1).flatten()
    x, pos = torch.randn(1, 2, 5, d), torch.arange(5)
    half, _ = RotaryPositions(head_dim=d, layout="half").rotate(x, x, pos, pos)
    inter, _ = RotaryPositions(head_dim=d).rotate(x[..., pairs_adjacent], x, pos, pos)
    torch.testing.assert_close(half[..., pairs_adjacent], inter)


def test_fraction_rotates_the_first_features_and_passes_the_rest():
    torch.manual_seed(2)
    pe = RotaryPositions(head_dim=16, fraction=0.5)
    assert pe.rotary_dim == 8
    x, pos = torch.randn(2, 3, 6, 16), torch.arange(6)
    out, _ = pe.rotate(x, x, pos, pos)
    torch.testing.assert_close(out[..., :8], complex_rope(x[..., :8], pos), atol=1e-5, rtol=1e-5)
    assert torch.equal(out[..., 8:], x[..., 8:])


def test_scores_depend_on_relative_position_only():
    torch.manual_seed(3)
    pe = RotaryPositions(head_dim=32)
    q, k = torch.randn(1, 1, 1, 32), torch.randn(1, 1, 1, 32)

    def score(m: int, n: int) -> torch.Tensor:
        q_rot, k_rot = pe.rotate(q, k, torch.tensor([m]), torch.tensor([n]))
        return (q_rot * k_rot).sum()

    for m, n in [(3, 1), (0, 5), (7, 7)]:
        for shift in (1, 10, 100):
            torch.testing.assert_close(score(m, n), score(m + shift, n + shift), atol=1e-4, rtol=1e-5)
    assert not torch.allclose(score(3, 1), score(1, 3))


def test_batched_positions_rotate_each_row_by_its_own():
    torch.manual_seed(4)
    pe = RotaryPositions(head_dim=8)
    x = torch.randn(2, 3, 4, 8)
    positions = torch.tensor([[0, 1, 2, 3], [10, 11, 12, 13]])
    out, _ = pe.rotate(x, x, positions, positions)
    for b in range(2):
        expected, _ = pe.rotate(x[b : b + 1], x[b : b + 1], positions[b], positions[b])
        torch.testing.assert_close(out[b : b + 1], expected)


def test_half_precision_keeps_dtype_and_is_close():
    """The frequencies stay float32 after .to(bfloat16): rounding them would grow with position."""
    torch.manual_seed(5)
    pe = RotaryPositions(head_dim=16).to(torch.bfloat16)
    x, pos = torch.randn(1, 2, 5, 16), torch.arange(1000, 1005)
    out, _ = pe.rotate(x.bfloat16(), x.bfloat16(), pos, pos)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), complex_rope(x, pos), atol=0.05, rtol=0.02)


def test_factory_reads_head_dim_and_checks_fraction():
    pe = build_part("positional", "rope(fraction=0.5)", d_model=64, heads=4)
    assert (pe.head_dim, pe.rotary_dim) == (16, 8)
    assert not list(pe.parameters()) and not pe.state_dict()
    with pytest.raises(SpecError, match="fraction"):
        build_part("positional", "rope(fraction=0.0)", d_model=64, heads=4)
    with pytest.raises(SpecError, match="at least 2"):
        build_part("positional", "rope(fraction=0.05)", d_model=64, heads=4)


def test_describe_shows_uses_rotate():
    described = plugformer.registry.describe("positional", "rope")
    assert described.capabilities["uses_rotate"] is True
    assert described.capabilities["uses_bias"] is False
    assert [a.name for a in described.args] == ["base", "fraction", "layout"]


# -- in models ------------------------------------------------------------------------------


def test_dense_and_fused_agree_and_weights_carry_over():
    torch.manual_seed(6)
    dense = build("gpt_tiny(pe=rope(fraction=0.5), attn=dense, kv_heads=2)").eval()
    fused = build("gpt_tiny(pe=rope(fraction=0.5), attn=fused, kv_heads=2)").eval()
    fused.load_state_dict(dense.state_dict())
    ids = torch.randint(0, 256, (2, 16))
    torch.testing.assert_close(fused(ids), dense(ids), atol=1e-5, rtol=1e-5)


def test_encoder_decoder_dense_and_fused_agree():
    torch.manual_seed(7)
    dense = build("transformer_tiny(pe=rope, attn=dense)").eval()
    fused = build("transformer_tiny(pe=rope, attn=fused)").eval()
    fused.load_state_dict(dense.state_dict())
    src, tgt = torch.randint(0, 256, (2, 11)), torch.randint(0, 256, (2, 9))
    torch.testing.assert_close(fused(src, tgt), dense(src, tgt), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("attn", ["dense", "fused"])
def test_cached_decoding_matches_the_full_sequence(attn, cached_logits):
    torch.manual_seed(8)
    model = build(f"gpt_tiny(pe=rope, attn={attn}, kv_heads=2)").eval()
    ids = torch.randint(0, 256, (2, 12))
    torch.testing.assert_close(cached_logits(model, ids, prefix=5), model(ids), atol=1e-5, rtol=0)


def test_model_casts_and_runs_in_bfloat16():
    torch.manual_seed(11)
    model = build("gpt_tiny(pe=rope)").eval()
    ids = torch.randint(0, 256, (1, 8))
    expected = model(ids)
    logits = model.to(torch.bfloat16)(ids)
    assert logits.dtype == torch.bfloat16
    torch.testing.assert_close(logits.float(), expected, atol=0.1, rtol=0.05)


# "positions matter" is tests/plugins/test_positions_matter.py: a bidirectional model, every
# registered encoding (a causal model sees order through its mask, RoPE or not).


def test_learns_what_a_model_without_it_cannot(learned_losses):
    """Predicting the previous token needs positions; the twin without RoPE (same weights)
    only averages the past."""
    models = []
    for pe in ("rope", "none"):
        torch.manual_seed(10)
        models.append(build(f"gpt_tiny(pe={pe}, layers=1, vocab=64)"))
    working, broken = learned_losses(*models, "lookback", 60, vocab=64)
    assert working < broken - 1.0, (working, broken)
