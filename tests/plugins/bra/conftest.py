"""Every bi-level routing attention test runs on each CPU path of the kernel."""

from __future__ import annotations

import pytest

#: The kernel arguments that force each path: every score under the routed mask (short inputs),
#: the gathered tiles, and MoBA's grouped layout (causal token-routed self-attention).
PATHS = {
    "tiles": {"dense_up_to": 0, "grouped_from": 1 << 30},
    "masked": {"dense_up_to": 1 << 30, "grouped_from": 1 << 30},
    "grouped": {"dense_up_to": 0, "grouped_from": 0},
}


class Path(dict):
    """Kernel keyword arguments choosing one path; ``spec`` writes them into a spec string."""

    @property
    def spec(self) -> str:
        return ", ".join(f"{name}={value}" for name, value in self.items())


@pytest.fixture(autouse=True, params=list(PATHS))
def path(request) -> Path:
    """The kernel arguments of this run's path; tests pass them (``**path``) to the kernels they
    build. A call the path cannot serve (the grouped path is for causal token routing) takes the
    tiles."""
    return Path(PATHS[request.param])
