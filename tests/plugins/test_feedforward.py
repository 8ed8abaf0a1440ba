"""``relu`` / ``gelu`` feed-forward networks: the GELU forms against their closed forms."""

import math

import pytest
import torch
import torch.nn.functional as F

from plugformer import SpecError, build_part


def ffn_reference(ffn, x, activation):
    return F.linear(activation(F.linear(x, ffn.up_proj.weight, ffn.up_proj.bias)), ffn.down_proj.weight, ffn.down_proj.bias)


def gelu_tanh_formula(x):
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def gelu_erf_formula(x):
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


@pytest.mark.parametrize(
    "spec, formula, torch_form",
    [
        ("gelu(d_ff=32, approximate='tanh')", gelu_tanh_formula, lambda x: F.gelu(x, approximate="tanh")),
        ("gelu(d_ff=32)", gelu_erf_formula, F.gelu),
    ],
)
def test_gelu_forms(spec, formula, torch_form):
    torch.manual_seed(0)
    ffn = build_part("feedforward", spec, d_model=16, heads=2)
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    ffn = ffn.double()
    torch.testing.assert_close(ffn(x), ffn_reference(ffn, x, torch_form), rtol=0, atol=0)
    torch.testing.assert_close(ffn(x), ffn_reference(ffn, x, formula), rtol=1e-12, atol=1e-12)


def test_tanh_and_exact_gelu_differ():
    x = torch.linspace(-4, 4, 101, dtype=torch.float64)
    assert (gelu_tanh_formula(x) - gelu_erf_formula(x)).abs().max() > 1e-5


def test_gelu_approximate_must_be_none_or_tanh():
    with pytest.raises(SpecError, match="approximate must be one of .*'none', 'tanh'.*got 'erf'"):
        build_part("feedforward", "gelu(approximate='erf')", d_model=16, heads=2)
