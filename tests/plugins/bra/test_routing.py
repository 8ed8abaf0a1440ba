"""Routing: the shapes of the routes and the own region of causal tokens."""

from __future__ import annotations

import pytest
import torch

from plugformer.plugins.bra import route
from plugformer.plugins.bra.routing import region_means
from .reference import qkv


def test_route_shapes_and_the_own_region_of_causal_tokens():
    q, k, _ = qkv(lq=50)
    region_routes = route(q, k, region=8, topk=3, routing="region")
    token_routes = route(q, k, region=8, topk=3, causal=True)
    assert region_routes.shape == (2, 7, 3)
    assert token_routes.shape == (2, 50, 3)
    own = torch.arange(50) // 8
    assert torch.equal(token_routes[..., 0], own.expand(2, 50))
    others = token_routes[..., 1:]
    assert torch.all((others < own[:, None]) | (others == -1))
    assert torch.all(others[:, :8] == -1)  # the first region has nothing before it


@pytest.mark.parametrize("length", [48, 50])
@pytest.mark.parametrize("token_major", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_region_means_are_the_means_of_each_regions_real_tokens(length, token_major, masked):
    x = torch.randn(2, length, 3, 4).transpose(1, 2) if token_major else torch.randn(2, 3, length, 4)
    valid = torch.rand(2, length) > 0.3 if masked else None
    means, counts = region_means(x, valid, 8)
    for j in range(means.shape[2]):
        keys = torch.arange(j * 8, min(j * 8 + 8, length))
        for b in range(2):
            real = keys if valid is None else keys[valid[b, keys]]
            assert counts[b, j] == len(real)
            expected = x[b, :, real].mean(1) if len(real) else torch.zeros(3, 4)
            torch.testing.assert_close(means[b, :, j], expected)
