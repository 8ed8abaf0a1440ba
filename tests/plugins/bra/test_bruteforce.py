"""Bi-level routing attention against a region choice written out here, token by token and
region by region in plain loops (BiFormer's region routing, MoBA's causal token routing), and
against exact attention under the mask of that choice. Nothing here calls the library's
``route``: a kernel that chose the wrong regions (the lowest-scoring ones, say) fails."""

from __future__ import annotations

import math

import pytest
import torch

from plugformer import build_part

R, TOPK = 4, 2


def _regions(length: int, start: int = 0) -> list[list[int]]:
    """Key indices of each region: regions of R tokens from index ``start`` (a row's first real
    token); the indices before ``start`` are padding and belong to no region."""
    return [list(range(s, min(s + R, length))) for s in range(start, length, R)]


def _mean(x: torch.Tensor, index: list[int]) -> torch.Tensor:
    return sum(x[:, i] for i in index) / len(index)  # (H, Dh)


def _best(scores: dict[int, float], n: int) -> set[int]:
    return set(sorted(scores, key=lambda j: -scores[j])[:n])


def brute_region_mask(q, k, start=0):
    """BiFormer: region-mean queries against region-mean keys, summed over heads, top-k. (Lq, Lk)."""
    length = q.shape[1]
    regions = _regions(length, start)
    allowed = torch.zeros(length, length, dtype=torch.bool)
    for qr in regions:
        q_mean = _mean(q, qr)
        scores = {j: float((q_mean * _mean(k, kr)).sum()) for j, kr in enumerate(regions)}
        for j in _best(scores, TOPK):
            for i in qr:
                allowed[i, regions[j]] = True
    return allowed


def brute_causal_token_mask(q, k, start=0):
    """MoBA: token t scores q_t against the mean key of every region wholly before its own,
    summed over heads, keeps the best TOPK - 1 and its own region, causal inside. (Lq, Lk)."""
    length = q.shape[1]
    regions = _regions(length, start)
    allowed = torch.zeros(length, length, dtype=torch.bool)
    for own, region in enumerate(regions):
        for t in region:
            scores = {j: float((q[:, t] * _mean(k, regions[j])).sum()) for j in range(own)}
            for j in _best(scores, TOPK - 1) | {own}:
                for key in regions[j]:
                    allowed[t, key] = key <= t
    return allowed


def exact(q, k, v, allowed):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.nan_to_num(scores.softmax(-1)) @ v


@pytest.mark.parametrize("causal", [False, True], ids=["region", "causal-token"])
def test_attends_the_regions_a_written_out_routing_chooses(causal, path):
    torch.manual_seed(3)
    kernel = build_part("attention", f"bra(region={R}, topk={TOPK}, {path.spec})",
                        d_model=32, heads=2, causal=causal)
    q, k, v = (torch.randn(1, 2, 22, 16, dtype=torch.float64) for _ in range(3))
    allowed = (brute_causal_token_mask if causal else brute_region_mask)(q[0], k[0])
    torch.testing.assert_close(kernel(q, k, v, causal=causal), exact(q, k, v, allowed))


@pytest.mark.parametrize("causal", [False, True], ids=["region", "causal-token"])
def test_a_left_padded_row_attends_the_regions_of_its_tokens_alone(causal, path):
    """Regions start at the first real token, whatever padding precedes it."""
    torch.manual_seed(4)
    kernel = build_part("attention", f"bra(region={R}, topk={TOPK}, {path.spec})",
                        d_model=32, heads=2, causal=causal)
    pads, length = 3, 22
    q, k, v = (torch.randn(1, 2, length, 16, dtype=torch.float64) for _ in range(3))
    mask = (torch.arange(length) >= pads)[None, None, None, :]
    out = kernel(q, k, v, mask=mask, causal=causal)
    real = slice(pads, length)
    allowed = (brute_causal_token_mask if causal else brute_region_mask)(q[0, :, real], k[0, :, real])
    torch.testing.assert_close(out[..., real, :], exact(q[..., real, :], k[..., real, :], v[..., real, :], allowed))
