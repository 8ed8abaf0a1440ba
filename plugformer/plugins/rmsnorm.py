"""Deprecated: ``rmsnorm`` moved into :mod:`plugformer.plugins.norms`; importing from here warns."""

from plugformer.core.deprecation import moved_names

__getattr__ = moved_names(__name__, "plugformer.plugins.norms", ("RMSNorm", "rmsnorm", "qk_norms"))
