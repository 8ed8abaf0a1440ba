"""The registry holds parts of every kind.

The contract every registered part keeps (shapes, dtypes, finiteness, gradients, causality,
padding, state dicts) is checked by the conformance kit, ``plugformer.testing``, over every
built-in part in tests/testing/test_builtins.py and over examples/plugin's kernel in its own
tests."""

import pytest

import plugformer


@pytest.mark.parametrize("kind", ["feedforward", "norm"])
def test_every_kind_has_parts(kind):
    assert plugformer.registry.list(kind)
