"""The flex_attention path: eager on CPU against the tiles, compiled on GPU."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from plugformer.plugins.bra import BiLevelRoutingAttention, Geometry, flex, n_regions, route
from .reference import CASES, attend_mask, implied_mask, padding, qkv


@pytest.mark.parametrize("case", CASES)
def test_flex_mask_mod_and_block_mask_match_the_tiles(case, path):
    lq, lk, causal, routing = (CASES[case][key] for key in ("lq", "lk", "causal", "routing"))
    q, k, v = qkv(h=4, hkv=2, lq=lq, lk=lk, dtype=torch.float32)
    mask = padding(2, lk, [lk - 13, lk])
    kernel = BiLevelRoutingAttention(
        heads=4, head_dim=8, region=8, topk=3, routing=routing, cross=lq != lk, **path,
    )
    key_valid = mask[:, 0, 0]
    routes = route(q, k, region=8, topk=3, causal=causal, routing=routing, key_mask=key_valid,
                   query_mask=key_valid if routing == "region" and lq == lk else None)
    geometry = Geometry(lq=lq, lk=lk, region=8, token=routing == "token", causal=causal)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = flex.flex_bra(q, k, v, routes, geometry, key_valid=key_valid, scale=8**-0.5, compile=False)
    expected = kernel(q, k, v, mask=mask, causal=causal)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    blocks = flex.block_mask(routes, geometry, key_valid=key_valid)
    allowed = attend_mask(2, lq, lk, causal=causal, mask=mask) & implied_mask(
        routes, token=routing == "token", b=2, lq=lq, lk=lk, region=8
    )  # (B, 1, Lq, Lk)
    cells_blocks = blocks.to_dense()[:, 0]  # (B, nq, nk): blocks the compiled kernel visits
    needed = F.pad(allowed[:, 0], (0, -lk % 8, 0, -lq % 8)).view(2, n_regions(lq, 8), 8, -1, 8).any(4).any(2)
    assert torch.all(cells_blocks.bool() | ~needed)


def test_flex_gathers_a_general_mask_and_a_bias(path):
    q, k, v = qkv(h=4, hkv=2, lq=40, dtype=torch.float32)
    general = torch.rand(2, 4, 40, 40, generator=torch.Generator().manual_seed(3)) > 0.3
    slope = torch.tensor([0.5, -0.25, 0.1, 0.0])

    def bias(q_idx, k_idx):
        return slope.view(-1, *([1] * max(q_idx.dim(), k_idx.dim()))) * (k_idx - q_idx)

    kernel = BiLevelRoutingAttention(heads=4, head_dim=8, region=8, topk=2, **path)
    key_valid = general.any(2).any(1)
    routes = route(q, k, region=8, topk=2, key_mask=key_valid, query_mask=key_valid)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        geometry = Geometry(lq=40, lk=40, region=8, token=False, causal=False)
        out = flex.flex_bra(q, k, v, routes, geometry, key_valid=key_valid, mask=general, score_bias=bias,
                            scale=8**-0.5, compile=False)
    torch.testing.assert_close(out, kernel(q, k, v, mask=general, score_bias=bias), atol=1e-5, rtol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("causal", [False, True])
def test_flex_backend_on_gpu_matches_the_tiles(causal, path):
    q, k, v = (x.cuda() for x in qkv(h=8, hkv=2, lq=1000, dh=64, dtype=torch.float32))
    mask = padding(2, 1000, [1000, 800]).cuda()
    outs = {}
    for backend in ("torch", "flex"):
        kernel = BiLevelRoutingAttention(
            heads=8, head_dim=64, region=64, topk=4, backend=backend, **path,
        )
        outs[backend] = kernel(q, k, v, mask=mask, causal=causal)
    torch.testing.assert_close(outs["flex"], outs["torch"], atol=2e-3, rtol=0)
