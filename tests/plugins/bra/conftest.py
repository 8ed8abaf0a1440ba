"""Every bi-level routing attention test runs on both CPU paths of the kernel."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, params=["tiles", "masked"])
def dense_up_to(request) -> int:
    """The kernel's ``dense_up_to`` for this run: 0 (always the gathered tiles) or more keys than
    any test has (every score under the routed mask, what short inputs take); tests pass it to
    the kernels they build."""
    return 0 if request.param == "tiles" else 1 << 30
