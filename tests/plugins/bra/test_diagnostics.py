"""Routing diagnostics (plugformer/plugins/bra/diagnostics.py) against brute force: route recall
from a dense softmax and a loop over the chosen regions, entropy and load from their formulas on
hand-made routes."""

from __future__ import annotations

import math

import pytest
import torch

from plugformer.cli import main
from plugformer.core.attention import repeat_kv
from plugformer.plugins.bra import BiLevelRoutingAttention, Geometry, route_stats, routing_stats
from plugformer.plugins.bra.diagnostics import choice_counts, region_load, routing_entropy

from .reference import padding, qkv


def brute_recall(kernel, q, k, *, causal, mask=None, bias=None):
    """Per head: mean over real queries of the dense softmax mass on the keys of the regions
    kernel.route chose, by loops (right padding only, so routes are in the input's coordinates)."""
    b, h, lq, _ = q.shape
    lk = k.shape[2]
    routes = kernel.route(q, k, mask=mask, causal=causal)
    token = kernel.geometry(q, k, causal=causal).token
    scores = q @ repeat_kv(k, h).transpose(-1, -2) * kernel.scale  # (B, H, Lq, Lk)
    if bias is not None:
        scores = scores + bias(torch.arange(lq)[:, None], torch.arange(lk)[None, :])
    real = torch.ones(b, lk, dtype=torch.bool) if mask is None else mask[:, 0, 0]
    totals, counted = torch.zeros(h, dtype=torch.float64), 0
    for row in range(b):
        for i in range(lq):
            if lq == lk and not real[row, i]:
                continue
            seen = [j for j in range(lk) if real[row, j] and (not causal or j <= i + lk - lq)]
            chosen = routes[row, i if token else i // kernel.region].tolist()
            for head in range(h):
                p = torch.softmax(scores[row, head, i, seen], dim=0)
                totals[head] += sum(float(p[n]) for n, j in enumerate(seen) if j // kernel.region in chosen)
            counted += 1
    return totals / counted


@pytest.mark.parametrize("routing, causal, lq, hkv", [
    ("region", False, 37, 4), ("token", True, 37, 2), ("token", False, 37, 4), ("token", True, 9, 4),
])
@pytest.mark.parametrize("padded", [False, True])
def test_route_recall_equals_brute_force(routing, causal, lq, hkv, padded, path):
    kernel = BiLevelRoutingAttention(heads=4, head_dim=8, region=8, topk=2, routing=routing,
                                     **path)
    q, k, v = qkv(b=2, h=4, hkv=hkv, lq=lq, lk=37, seed=3)
    mask = padding(2, 37, [37, 30]) if padded else None
    with route_stats(kernel, queries=None) as stats:
        kernel(q, k, v, causal=causal, mask=mask)
    (layer,) = stats.values()
    expected = brute_recall(kernel, q, k, causal=causal, mask=mask)
    torch.testing.assert_close(layer.recall.double(), expected, atol=1e-5, rtol=0)
    assert bool((layer.recall < 1 - 1e-3).any())  # top-2 of 5 regions misses some mass


@pytest.mark.parametrize("routing, causal", [("region", False), ("token", True), ("token", False)])
def test_route_recall_is_one_when_topk_covers_every_region(routing, causal, path):
    kernel = BiLevelRoutingAttention(heads=4, head_dim=8, region=8, topk=5, routing=routing,
                                     **path)
    q, k, v = qkv(b=3, h=4, hkv=2, lq=40, seed=1)
    mask = padding(3, 40, [40, 25, 33]) | torch.zeros(3, 1, 1, 40, dtype=torch.bool)
    mask[2, ..., :5] = False  # a left-padded row: regions cut by token position
    (layer,) = routing_stats(kernel, lambda m: m(q, k, v, causal=causal, mask=mask), queries=16)
    torch.testing.assert_close(layer.recall, torch.ones(4))
    assert layer.queries > 0


def test_route_recall_with_a_score_bias_equals_brute_force():
    kernel = BiLevelRoutingAttention(heads=2, head_dim=8, region=4, topk=2, routing="token")
    q, k, v = qkv(b=1, h=2, hkv=2, lq=20, seed=7)
    slopes = torch.tensor([0.5, 0.05], dtype=torch.float64)[:, None, None]

    def bias(q_idx, k_idx):
        return -slopes * (q_idx - k_idx).abs()  # ALiBi-style, (H, Lq, Lk)

    with route_stats(kernel, queries=None) as stats:
        kernel(q, k, v, causal=True, score_bias=bias)
    expected = brute_recall(kernel, q, k, causal=True, bias=bias)
    torch.testing.assert_close(stats[""].recall.double(), expected, atol=1e-6, rtol=0)
    assert not torch.allclose(expected, brute_recall(kernel, q, k, causal=True))


def test_recall_follows_the_sampled_queries_and_multiple_calls_add_up():
    kernel = BiLevelRoutingAttention(heads=2, head_dim=8, region=4, topk=1, routing="token")
    q, k, v = qkv(b=1, h=2, hkv=2, lq=24, seed=5)
    with route_stats(kernel, queries=None) as everything:
        kernel(q, k, v, causal=True)
        kernel(q, k, v, causal=True)
    with route_stats(kernel, queries=8, seed=1) as sample:
        kernel(q, k, v, causal=True)
    whole = brute_recall(kernel, q, k, causal=True)
    torch.testing.assert_close(everything[""].recall.double(), whole, atol=1e-6, rtol=0)
    assert everything[""].queries == 48 and sample[""].queries == 8


def entropy_of(counts):
    total = sum(counts)
    return -sum(c / total * math.log(c / total) for c in counts if c) / math.log(len(counts))


def cv_of(counts):
    mean = sum(counts) / len(counts)
    return math.sqrt(sum((c - mean) ** 2 for c in counts) / len(counts)) / mean


def test_entropy_and_load_of_hand_made_token_routes():
    geometry = Geometry(lq=4, lk=12, region=4, token=True, causal=False)
    routes = torch.tensor([[[0, 1], [0, 2], [1, -1], [0, 1]]])
    counts = choice_counts(routes, geometry)
    assert counts.tolist() == [[3.0, 3.0, 1.0]]
    assert routing_entropy(counts[0]) == pytest.approx(entropy_of([3, 3, 1]))
    assert region_load(counts[0]) == pytest.approx(cv_of([3, 3, 1]))
    # a padded query chooses nothing
    counts = choice_counts(routes, geometry, query_valid=torch.tensor([[True, True, True, False]]))
    assert counts.tolist() == [[2.0, 2.0, 1.0]]


def test_entropy_and_load_of_hand_made_region_routes():
    geometry = Geometry(lq=6, lk=12, region=4, token=False, causal=False)  # query regions of 4 and 2
    counts = choice_counts(torch.tensor([[[0], [2]]]), geometry)
    assert counts.tolist() == [[4.0, 0.0, 2.0]]
    assert routing_entropy(counts[0]) == pytest.approx(entropy_of([4, 0, 2]))
    assert region_load(counts[0]) == pytest.approx(cv_of([4, 0, 2]))
    assert routing_entropy(torch.tensor([5.0, 5.0, 5.0])) == pytest.approx(1.0)
    assert region_load(torch.tensor([5.0, 5.0, 5.0])) == 0.0
    assert routing_entropy(torch.tensor([7.0, 0.0, 0.0])) == pytest.approx(0.0)


def test_layer_stats_count_real_regions_only():
    kernel = BiLevelRoutingAttention(heads=2, head_dim=8, region=4, topk=1, routing="token")
    q, k, v = qkv(b=2, h=2, hkv=1, lq=16, seed=2)
    mask = padding(2, 16, [16, 6])  # row 1: regions 0 and 1 real, 2 and 3 empty
    with route_stats(kernel) as stats:
        kernel(q, k, v, mask=mask)
    routes = kernel.route(q, k, mask=mask)
    geometry = kernel.geometry(q, k)
    counts = choice_counts(routes, geometry, query_valid=mask[:, 0, 0])
    real = torch.cat([counts[0], counts[1, :2]])
    assert stats[""].regions == 6
    assert stats[""].entropy == pytest.approx(entropy_of(real.tolist()))
    assert stats[""].load == pytest.approx(cv_of(real.tolist()))


def test_route_stats_errors():
    with pytest.raises(ValueError, match="no bra attention kernel"):
        with route_stats(torch.nn.Linear(2, 2)):
            pass
    kernel = BiLevelRoutingAttention(heads=2, head_dim=8)
    with pytest.raises(ValueError, match="queries must be >= 1 or None"):
        with route_stats(kernel, queries=0):
            pass


def test_routes_stats_command_prints_a_row_per_layer_and_head(capsys):
    spec = "gpt_tiny(attn=bra(region=8, topk=2), vocab=40)"
    assert main(["routes", spec, "-L", "50", "--stats", "--queries", "16"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["layer", "head", "recall", "entropy", "load", "topk", "regions", "queries"]
    rows = [line.split() for line in out[1:] if line.startswith("decoder")]
    assert [(r[0], r[1]) for r in rows] == [(f"decoder.{layer}.self_attn", str(head))
                                          for layer in range(2) for head in range(4)]
    assert all(0.0 < float(r[2]) <= 1.0 and r[5] == "2" and r[6] == "7" for r in rows)
