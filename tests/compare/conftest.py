"""Fixtures of the compare tests."""

from __future__ import annotations

import pytest

from plugformer.core.interfaces import AttentionKernel
from plugformer.registry.registry import Registry


class BlindAttention(AttentionKernel):
    """Ignores the queries and keys: every query gets the mean of the values, so no position can
    tell which token to copy."""

    def forward(self, q, k, v, *, mask=None, causal=False, score_bias=None):
        return v.mean(dim=-2, keepdim=True).expand(*v.shape[:-2], q.shape[-2], v.shape[-1])


@pytest.fixture
def blind_registry() -> Registry:
    """The default parts and ``attention`` ``blind`` (`BlindAttention`), a kernel that cannot learn."""
    registry = Registry(autoload=True)
    registry.add("attention", "blind", lambda ctx: BlindAttention())
    return registry
