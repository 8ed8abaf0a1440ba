"""Route maps recorded from outside the kernel, against the map of the routes the kernel would
take (computed here from :func:`route` and the query regions by hand), and their plot."""

from __future__ import annotations

import pytest
import torch

from plugformer.core.attention import MultiHeadAttention
from plugformer.plugins.bra import BiLevelRoutingAttention, plot_routes, record_routes, route

from .reference import padding, qkv


def layers_of(routings, path):
    return torch.nn.ModuleList(
        MultiHeadAttention(d_model=32, heads=4, kv_heads=4, head_dim=8,
                           kernel=BiLevelRoutingAttention(
                               heads=4, head_dim=8, region=8, topk=2, routing=r, **path,
                           ))
        for r in routings
    )


def test_record_and_plot_routes(tmp_path, path):
    pytest.importorskip("matplotlib")
    layers = layers_of(("region", "token"), path)
    x = torch.randn(2, 50, 32)
    with record_routes(layers) as routes:
        layers[0](x)
        layers[1](x, causal=True)
    assert set(routes) == {"0.kernel", "1.kernel"}
    assert routes["0.kernel"].shape == (7, 7)
    torch.testing.assert_close(routes["0.kernel"].sum(1), torch.full((7,), 2.0))
    png = plot_routes(routes, tmp_path / "routes.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    recorded = routes["0.kernel"]
    layers[0](x * 2)  # after the block: nothing records, and the kernel kept no state
    assert routes["0.kernel"] is recorded
    assert not any(hasattr(layers[0].kernel, name) for name in ("record_routes", "last_route_map"))


@pytest.mark.parametrize("routing, causal", [("region", False), ("token", True)])
def test_recorded_map_is_the_share_of_queries_choosing_each_region(routing, causal, path):
    q, k, v = qkv(lq=45)
    mask = padding(2, 45, [45, 30])
    kernel = BiLevelRoutingAttention(heads=4, head_dim=8, region=8, topk=2, routing=routing,
                                     **path)
    with record_routes(kernel) as routes:
        kernel(q, k, v, mask=mask, causal=causal)
    key_valid = mask[:, 0, 0]
    chosen = route(q, k, region=8, topk=2, causal=causal, routing=routing, key_mask=key_valid,
                   query_mask=key_valid if routing == "region" else None)
    per_query = chosen if routing == "token" else chosen[:, torch.arange(45) // 8]  # (B, Lq, S)
    expected = torch.zeros(6, 6, dtype=torch.float64)
    for b in range(2):
        for i in range(45):
            for j in per_query[b, i].tolist():
                if j >= 0:
                    expected[i // 8, j] += 1
    expected /= torch.tensor([16, 16, 16, 16, 16, 10], dtype=torch.float64)[:, None]  # 2 rows x queries
    torch.testing.assert_close(routes[""].double(), expected)


def test_record_routes_needs_a_bra_kernel():
    with pytest.raises(ValueError, match="no bra attention kernel"):
        with record_routes(torch.nn.Linear(2, 2)):
            pass
