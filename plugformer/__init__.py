"""plugformer: transformer parts behind a plugin registry.

Compose a model from one line, swap its parts, compare variants::

    import plugformer
    model = plugformer.build("transformer_tiny(attn=bra(region=8, topk=2), pe=learned)")
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

from plugformer.hooks import hookimpl
from plugformer.registry.errors import SpecError
from plugformer import registry
from plugformer.registry.registry import register
from plugformer.registry.spec import Spec, expand, parse

__all__ = [
    "Spec", "SpecError", "build", "build_part", "compare", "expand", "hookimpl", "load", "parse",
    "register", "registry", "resolve", "save",
]


def __getattr__(name: str) -> Any:
    # Heavier entry points load on first use, so `import plugformer` stays cheap (torch loads
    # with the builder): pytest imports plugformer.testing's plugin in every run of every
    # project that has plugformer installed.
    if name in ("build", "build_part", "resolve"):
        from plugformer.registry import builder

        return getattr(builder, name)
    if name == "compare":
        from plugformer.compare import compare

        return compare
    if name in ("save", "load"):
        from plugformer import io

        return getattr(io, name)
    raise AttributeError(f"module 'plugformer' has no attribute {name!r}")
