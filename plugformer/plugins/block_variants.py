"""Deprecated: ``parallel`` and ``sandwich`` moved into :mod:`plugformer.plugins.blocks`;
importing from here warns."""

from plugformer.core.deprecation import moved_names

__getattr__ = moved_names(
    __name__, "plugformer.plugins.blocks", ("ParallelBlock", "SandwichBlock", "parallel", "sandwich")
)
