"""Deprecated: ``rmsnorm`` moved into :mod:`plugformer.plugins.norms`; importing from here
warns and will stop working in the next release."""

from __future__ import annotations

import warnings
from typing import Any

from plugformer.plugins import norms as _home

_MOVED = ("RMSNorm", "rmsnorm", "qk_norms")


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        warnings.warn(
            f"plugformer.plugins.rmsnorm.{name} moved to plugformer.plugins.norms.{name}; "
            "import it from there",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(_home, name)
    raise AttributeError(f"module 'plugformer.plugins.rmsnorm' has no attribute {name!r}")
