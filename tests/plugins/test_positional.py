"""Positional encodings added to embeddings: ``sinusoidal`` against Vaswani et al.'s formula,
``learned`` and ``none``."""

import math

import pytest
import torch

import plugformer
from plugformer.plugins.positional import sinusoidal_table
from plugformer.registry.spec import SpecError


def formula(pos: int, j: int, d: int, base: float = 10000.0) -> float:
    """PE(pos, 2i) = sin(pos / base^(2i/d)), PE(pos, 2i+1) = cos(pos / base^(2i/d))."""
    two_i = j - j % 2
    angle = pos / base ** (two_i / d)
    return math.sin(angle) if j % 2 == 0 else math.cos(angle)


def build(name: str, **context):
    context = {"d_model": 8, "heads": 2, "max_len": 16, **context}
    return plugformer.build_part("positional", name, **context)


@pytest.mark.parametrize("d", [8, 7])
def test_sinusoidal_table_is_the_formula(d):
    table = sinusoidal_table(torch.arange(50), d)
    expected = torch.tensor([[formula(pos, j, d) for j in range(d)] for pos in range(50)])
    assert table.shape == (50, d)
    assert (table - expected).abs().max() <= 1e-5


def test_sinusoidal_base_is_honoured():
    table = sinusoidal_table(torch.arange(20), 6, base=100.0)
    expected = torch.tensor([[formula(pos, j, 6, 100.0) for j in range(6)] for pos in range(20)])
    assert (table - expected).abs().max() <= 1e-5


def test_sinusoidal_embed_adds_the_formula():
    pe = build("sinusoidal")
    x = torch.randn(2, 5, 8)
    out = pe.embed(x, torch.arange(3, 8))
    expected = torch.tensor([[formula(pos, j, 8) for j in range(8)] for pos in range(3, 8)])
    assert (out - x - expected).abs().max() <= 1e-5


def test_sinusoidal_beyond_its_table_still_follows_the_formula():
    pe = build("sinusoidal", max_len=4)
    out = pe.embed(torch.zeros(1, 6, 8), torch.arange(10, 16))
    expected = torch.tensor([[formula(pos, j, 8) for j in range(8)] for pos in range(10, 16)])
    assert (out[0] - expected).abs().max() <= 1e-5


def test_sinusoidal_has_no_parameters_and_no_state():
    pe = build("sinusoidal")
    assert list(pe.parameters()) == [] and pe.state_dict() == {}


def test_learned_adds_one_trained_vector_per_position():
    pe = build("learned")
    x = torch.randn(2, 4, 8)
    (table,) = pe.parameters()  # (max_len, D)
    assert table.shape == (16, 8)
    assert torch.equal(pe.embed(x, torch.arange(2, 6)), x + table[2:6])


def test_learned_std_sets_the_initial_scale():
    torch.manual_seed(0)
    for std in (0.02, 0.5):
        (table,) = plugformer.build(f"transformer_tiny(pe=learned(std={std}))").stack.encoder.pe.parameters()
        assert abs(table.std().item() - std) < 0.05 * std  # 256 x 64 draws
    with pytest.raises(SpecError, match="learned std must be > 0, got -1"):
        plugformer.build("transformer_tiny(pe=learned(std=-1))")


def test_learned_beyond_max_len_says_how_to_fix_it():
    pe = build("learned", max_len=16)
    with pytest.raises(ValueError, match=r"cover 0..15, got position 19; build the model with max_len >= 20"):
        pe.embed(torch.zeros(1, 20, 8), torch.arange(20))


def test_learned_model_longer_than_max_len_fails_clearly():
    model = plugformer.build("gpt_tiny(max_len=8)")
    with pytest.raises(ValueError, match="max_len >= 10"):
        model(torch.randint(3, 256, (1, 10)))


def test_none_adds_nothing():
    pe = build("none")
    x = torch.randn(2, 3, 8)
    assert torch.equal(pe.embed(x, torch.arange(3)), x)
    assert not (pe.uses_embed or pe.uses_rotate or pe.uses_bias)


@pytest.mark.parametrize("name", ["sinusoidal", "learned"])
def test_batched_positions_give_each_row_its_own(name):
    pe = build(name)
    x = torch.zeros(2, 3, 8)
    positions = torch.tensor([[0, 1, 2], [5, 6, 7]])
    out = pe.embed(x, positions)
    assert torch.equal(out[1], pe.embed(x[:1], torch.arange(5, 8))[0])
