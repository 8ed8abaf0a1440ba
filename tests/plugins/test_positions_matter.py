"""Positions matter exactly when there is a positional encoding, in a bidirectional model.

A causal model sees order through its mask even without any encoding (the old test in
test_rope.py passed with RoPE switched off), so this asks an encoder: without a positional
encoding, self-attention and the feed-forward are permutation-equivariant, encode(src[perm]) ==
encode(src)[perm] to float tolerance; with any registered encoding (third-party ones included)
that equality must break. The expected value is the permutation itself, not a second run."""

from __future__ import annotations

import pytest
import torch

import plugformer
from plugformer import build

POSITIONAL = sorted(part.name for part in plugformer.registry.list("positional"))
L = 10


def _encoder_outputs(pe: str, attn: str):
    torch.manual_seed(0)
    model = build(f"transformer_tiny(pe={pe}, attn={attn}, layers=1)").eval()
    src = torch.randint(0, 256, (2, L), generator=torch.Generator().manual_seed(1))
    perm = torch.randperm(L, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        return model.encode(src[:, perm]), model.encode(src)[:, perm]


@pytest.mark.parametrize("attn", ["dense", "fused"])
@pytest.mark.parametrize("pe", POSITIONAL)
def test_permuting_the_source_changes_the_encoding_exactly_when_there_is_a_pe(pe, attn):
    permuted_in, permuted_out = _encoder_outputs(pe, attn)
    equivariant = torch.allclose(permuted_in, permuted_out, atol=1e-5, rtol=0)
    assert equivariant == (pe == "none"), (
        f"pe={pe}: largest change {(permuted_in - permuted_out).abs().max():.2e}"
    )
    if pe != "none":  # not a rounding difference: the encoding moves the output
        assert (permuted_in - permuted_out).abs().max() > 1e-3
