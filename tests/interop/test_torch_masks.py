"""Every mask form nn.Transformer (and the nn.MultiheadAttention inside it) accepts gives the
same output from a stack made by ``from_torch``: 2-D (L, S) and 3-D (B·H, L, S) attention masks,
boolean (True = blocked) and float additive (any values, -inf included), with and without key
padding masks (boolean and float), the ``is_causal`` hints, and memory masks. The reference is
``nn.Transformer`` itself; no query row is fully blocked (torch gives NaN there, we give 0)."""

import pytest
import torch
from torch import nn

from plugformer.interop import from_torch

pytestmark = pytest.mark.filterwarnings(
    "ignore:Support for mismatched key_padding_mask and attn_mask:UserWarning",
    "ignore:Support for mismatched src_key_padding_mask and mask:UserWarning",
    "ignore:Converting mask without torch.bool dtype to bool:UserWarning",
    "ignore:enable_nested_tensor is True:UserWarning",
)

D, HEADS, FF = 32, 4, 64
B, S, T = 2, 7, 6
TOL = 1e-5


@pytest.fixture(autouse=True)
def no_fast_path():
    """The fast path turns padded positions into zeros; compare against the plain computation."""
    enabled = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    yield
    torch.backends.mha.set_fastpath_enabled(enabled)


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    reference = nn.Transformer(
        d_model=D, nhead=HEADS, num_encoder_layers=2, num_decoder_layers=2, dim_feedforward=FF,
        dropout=0.0, batch_first=True,
    ).eval()
    return reference, from_torch(reference), from_torch(reference, attn="dense")


def _blocked(shape, g, keep_first: bool) -> torch.Tensor:
    """Random boolean True = blocked; each row keeps its diagonal (square) or key 0."""
    mask = torch.rand(shape, generator=g) > 0.6
    if keep_first:
        mask[..., 0] = False
    else:
        mask[..., torch.arange(shape[-1]), torch.arange(shape[-1])] = False
    return mask


def attention_mask(form: str, lq: int, lk: int, g: torch.Generator):
    """An attention mask of ``form``: (dims, dtype) as nn.Transformer takes it."""
    dims, kind = form.split("-")
    shape = (lq, lk) if dims == "2d" else (B * HEADS, lq, lk)
    blocked = _blocked(shape, g, keep_first=lq != lk)
    if kind == "bool":
        return blocked
    if kind == "neginf":
        return torch.zeros(shape).masked_fill(blocked, float("-inf"))
    additive = torch.randn(shape, generator=g)  # "additive": a bias on every score
    return additive.masked_fill(blocked, float("-inf")) if kind == "additive_neginf" else additive


def padding_mask(kind: str, length: int):
    """Right padding of the second row by two (True = pad), as bool or float 0 / -inf."""
    pad = torch.zeros(B, length, dtype=torch.bool)
    pad[1, -2:] = True
    return pad if kind == "bool" else torch.zeros(B, length).masked_fill(pad, float("-inf"))


ATTN_FORMS = ["2d-bool", "2d-neginf", "2d-additive", "2d-additive_neginf",
              "3d-bool", "3d-neginf", "3d-additive", "3d-additive_neginf"]


def check(models, **kwargs):
    reference, fused, dense = models
    g = torch.Generator().manual_seed(1)
    src, tgt = torch.randn(B, S, D, generator=g), torch.randn(B, T, D, generator=g)
    with torch.no_grad():
        expected = reference(src, tgt, **kwargs)
        assert not expected.isnan().any()
        for ours in (fused, dense):
            assert (ours(src, tgt, **kwargs) - expected).abs().max() <= TOL


@pytest.mark.parametrize("padding", [None, "bool", "float"])
@pytest.mark.parametrize("form", ATTN_FORMS)
def test_src_mask_forms(models, form, padding):
    g = torch.Generator().manual_seed(2)
    kwargs = dict(src_mask=attention_mask(form, S, S, g))
    if padding:
        kwargs.update(src_key_padding_mask=padding_mask(padding, S),
                      memory_key_padding_mask=padding_mask(padding, S))
    check(models, **kwargs)


@pytest.mark.parametrize("padding", [None, "bool", "float"])
@pytest.mark.parametrize("form", ATTN_FORMS)
def test_tgt_mask_forms(models, form, padding):
    g = torch.Generator().manual_seed(3)
    kwargs = dict(tgt_mask=attention_mask(form, T, T, g))
    if padding:
        kwargs.update(tgt_key_padding_mask=padding_mask(padding, T))
    check(models, **kwargs)


@pytest.mark.parametrize("padding", [None, "bool", "float"])
@pytest.mark.parametrize("form", ATTN_FORMS)
def test_memory_mask_forms(models, form, padding):
    g = torch.Generator().manual_seed(4)
    kwargs = dict(memory_mask=attention_mask(form, T, S, g))
    if padding:
        kwargs.update(memory_key_padding_mask=padding_mask(padding, S))
    check(models, **kwargs)


@pytest.mark.parametrize("dtype", ["bool", "float"])
@pytest.mark.parametrize("padding", [None, "bool", "float"])
def test_is_causal_hints_with_the_causal_mask(models, dtype, padding):
    src_causal = nn.Transformer.generate_square_subsequent_mask(S)
    tgt_causal = nn.Transformer.generate_square_subsequent_mask(T)
    if dtype == "bool":
        src_causal, tgt_causal = src_causal.isinf(), tgt_causal.isinf()
    kwargs = dict(src_mask=src_causal, tgt_mask=tgt_causal, src_is_causal=True, tgt_is_causal=True)
    if padding:
        kwargs.update(src_key_padding_mask=padding_mask(padding, S),
                      tgt_key_padding_mask=padding_mask(padding, T),
                      memory_key_padding_mask=padding_mask(padding, S))
    check(models, **kwargs)


def test_every_mask_at_once(models):
    g = torch.Generator().manual_seed(5)
    check(models, src_mask=attention_mask("3d-additive", S, S, g),
          tgt_mask=attention_mask("3d-bool", T, T, g), memory_mask=attention_mask("2d-additive_neginf", T, S, g),
          src_key_padding_mask=padding_mask("float", S), tgt_key_padding_mask=padding_mask("bool", T),
          memory_key_padding_mask=padding_mask("bool", S))


def test_issue_12_item_5_example(models):
    """Batch 2, boolean src_mask (batch·heads, L, S): refused with a size mismatch before."""
    g = torch.Generator().manual_seed(6)
    check(models, src_mask=_blocked((B * HEADS, S, S), g, keep_first=False))


def test_a_flattened_mask_of_the_wrong_size_says_what_it_expects(models):
    _, fused, _ = models
    src, tgt = torch.randn(B, S, D), torch.randn(B, T, D)
    with pytest.raises(ValueError, match=r"\(batch \* heads, Lq, Lk\) = \(8, 7, 7\)"):
        fused(src, tgt, src_mask=torch.zeros(3, S, S, dtype=torch.bool))


def test_a_kernel_without_additive_masks_refuses_one_by_name():
    import plugformer

    stack = plugformer.build("transformer_tiny(attn=local(window=4), cross_attn=fused, pe=none)").stack
    src, tgt = torch.randn(B, S, 64), torch.randn(B, T, 64)
    with pytest.raises(ValueError, match="LocalAttention takes boolean masks only"):
        stack(src, tgt, src_mask=torch.randn(S, S))
    out = stack(src, tgt, src_mask=nn.Transformer.generate_square_subsequent_mask(S))  # 0 / -inf
    assert out.shape == (B, T, 64)
