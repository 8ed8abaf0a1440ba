"""Routing: the shapes of the routes and the own region of causal tokens."""

from __future__ import annotations

import torch

from plugformer.plugins.bra import route
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
