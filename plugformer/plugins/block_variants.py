"""Deprecated: ``block_variants`` moved into :mod:`plugformer.plugins.blocks`; importing from here
warns and will stop working in the next release."""

from __future__ import annotations

import warnings
from typing import Any

from plugformer.plugins import blocks as _home

_MOVED = ("ParallelBlock", "SandwichBlock", "parallel", "sandwich")


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        warnings.warn(
            f"plugformer.plugins.block_variants.{name} moved to plugformer.plugins.blocks.{name}; "
            "import it from there",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(_home, name)
    raise AttributeError(f"module 'plugformer.plugins.block_variants' has no attribute {name!r}")
