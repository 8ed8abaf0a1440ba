"""Mask conventions: True = may attend inside, nn.Transformer's True = blocked at the boundary."""

import pytest
import torch

from plugformer.core import masks


@pytest.mark.parametrize("lq, lk", [(4, 4), (2, 5), (1, 6), (5, 3)])
def test_causal_mask_is_bottom_right(lq, lk):
    expected = torch.tensor([[j <= lk - lq + i for j in range(lk)] for i in range(lq)])
    assert torch.equal(masks.causal_mask(lq, lk), expected)


def test_causal_mask_square_is_lower_triangular():
    assert torch.equal(masks.causal_mask(5, 5), torch.ones(5, 5, dtype=torch.bool).tril())


def test_padding_to_attend_inverts_and_broadcasts():
    padding = torch.tensor([[False, False, True], [False, True, True]])
    attend = masks.padding_to_attend(padding)
    assert attend.shape == (2, 1, 1, 3)
    assert torch.equal(attend[:, 0, 0], ~padding)


def test_padding_to_attend_accepts_float_masks():
    padding = torch.tensor([[0.0, 0.0, float("-inf")]])
    assert torch.equal(masks.padding_to_attend(padding)[:, 0, 0], torch.tensor([[True, True, False]]))


def test_padding_to_attend_of_none_is_none():
    assert masks.padding_to_attend(None) is None
    assert masks.attn_mask_to_attend(None) is None


def test_padding_mask_of_wrong_rank_names_the_shape():
    with pytest.raises(ValueError, match=r"\(batch, length\), got shape \(2, 1, 3\)"):
        masks.padding_to_attend(torch.zeros(2, 1, 3, dtype=torch.bool))


def test_float_mask_with_other_values_stays_additive():
    """nn.Transformer adds a float mask to the scores; only 0 / -inf ones become boolean (the
    refusal of other values moved to kernels without ``supports_additive_mask``, see
    tests/interop/test_torch_masks.py)."""
    additive = torch.tensor([[0.0, -1.0], [float("-inf"), 0.5]])
    assert masks.attn_mask_to_attend(additive) is additive
    assert masks.padding_to_attend(additive).shape == (2, 1, 1, 2)
    scores = torch.randn(2, 2)
    expected = torch.softmax(scores + additive, -1)
    assert torch.allclose(masks.masked_softmax(scores, additive), expected)


def test_merge_of_boolean_and_additive_masks_is_additive():
    allowed = torch.tensor([[True, False], [True, True]])
    additive = torch.tensor([[0.5, 0.0], [-1.0, float("-inf")]])
    merged = masks.merge(allowed, additive)
    inf = float("-inf")
    assert torch.equal(merged, torch.tensor([[0.5, inf], [-1.0, inf]]))
    assert masks.is_all_true(torch.zeros(2, 2)) and not masks.is_all_true(additive)


def test_flattened_batch_heads_masks_are_split_by_the_batch():
    """nn.Transformer's (B·H, L, S) mask: row b·H + h is batch b, head h."""
    flat = torch.rand(2 * 3, 4, 5) > 0.5
    padding = masks.padding_to_attend(torch.zeros(2, 5, dtype=torch.bool))  # (2, 1, 1, 5)
    merged = masks.merge(flat, padding)
    assert merged.shape == (2, 3, 4, 5)
    for b in range(2):
        for h in range(3):
            assert torch.equal(merged[b, h], flat[b * 3 + h])
    assert torch.equal(masks.unflatten_heads(flat, 2, 3, 4, 5), merged)
    assert masks.unflatten_heads(padding, 2, 3, 4, 5) is padding
    with pytest.raises(ValueError, match=r"\(batch \* heads, Lq, Lk\) = \(8, 4, 5\); got \(6, 4, 5\)"):
        masks.unflatten_heads(flat, 2, 4, 4, 5)
    with pytest.raises(ValueError, match="with batch 4; got"):
        masks.merge(flat, torch.ones(4, 1, 1, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\(Lq, Lk\) or \(batch \* heads, Lq, Lk\)"):
        masks.attn_mask_to_attend(torch.zeros(1, 2, 4, 5, dtype=torch.bool))


def test_integer_mask_is_refused():
    with pytest.raises(TypeError, match="bool or float, got torch.int64"):
        masks.attn_mask_to_attend(torch.zeros(2, 2, dtype=torch.long))


def test_attn_mask_conversion_matches_generate_square_subsequent_mask():
    float_mask = torch.nn.Transformer.generate_square_subsequent_mask(5)
    assert torch.equal(masks.attn_mask_to_attend(float_mask), masks.causal_mask(5, 5))
    assert torch.equal(masks.attn_mask_to_attend(float_mask.isinf()), masks.causal_mask(5, 5))


def test_merge_ands_and_skips_none():
    a = torch.tensor([True, True, False])
    b = torch.tensor([True, False, True])
    assert masks.merge(None, None) is None
    assert masks.merge(None, a) is a
    assert torch.equal(masks.merge(a, None, b), torch.tensor([True, False, False]))


def test_is_all_true():
    assert masks.is_all_true(None)
    assert masks.is_all_true(torch.ones(2, 3, dtype=torch.bool))
    assert not masks.is_all_true(torch.tensor([True, False]))


def test_with_causal_adds_the_bottom_right_mask():
    padding = masks.padding_to_attend(torch.tensor([[False, False, False, True]]))
    full = masks.with_causal(padding, True, 2, 4, None)
    assert full.shape == (1, 1, 2, 4)
    assert torch.equal(full[0, 0], torch.tensor([[True, True, True, False], [True, True, True, False]]))
    assert masks.with_causal(None, False, 2, 4, None) is None
    assert torch.equal(masks.with_causal(None, True, 2, 4, None), masks.causal_mask(2, 4))


def test_masked_softmax_equals_softmax_over_allowed_keys():
    torch.manual_seed(0)
    scores = torch.randn(3, 5)
    allowed = torch.tensor([
        [True, False, True, True, False],
        [False, False, False, False, False],
        [True, True, True, True, True],
    ])
    out = masks.masked_softmax(scores, allowed)
    for row in range(3):
        keys = allowed[row].nonzero().flatten()
        expected = torch.zeros(5)
        if len(keys):
            e = scores[row, keys].exp()
            expected[keys] = e / e.sum()
        assert torch.allclose(out[row], expected)


def test_masked_softmax_blocked_rows_have_finite_gradients():
    scores = torch.randn(2, 4, requires_grad=True)
    allowed = torch.tensor([[False] * 4, [True, False, True, False]])
    out = masks.masked_softmax(scores, allowed)
    (out * torch.randn(2, 4)).sum().backward()
    assert torch.isfinite(scores.grad).all()
    assert (scores.grad[0] == 0).all()


def test_masked_softmax_without_mask_is_softmax():
    scores = torch.randn(2, 3)
    assert torch.equal(masks.masked_softmax(scores, None), scores.softmax(-1))
