"""Where plugins come from: the built-in plugin modules, then the ``plugformer`` entry points of
installed distributions, and the environment variables that steer loading.

``PLUGFORMER_STRICT=1`` turns a plugin that fails to load into an error (the default records the
failure and keeps going); ``PLUGFORMER_DISABLE_PLUGINS=a,b`` skips the named plugins (entry-point
names, distribution names, or built-in module names).
"""

from __future__ import annotations

import importlib
import os
from importlib import metadata
from typing import Any, Callable, Iterator, Optional

import attrs

#: The entry-point group third-party distributions declare their plugins under.
ENTRY_POINT_GROUP = "plugformer"

#: The built-in plugins, loaded first, in this order. Each is a module with a
#: ``@hookimpl def plugformer_register(registry)``, like any third-party plugin.
BUILTIN_PLUGINS = (
    "plugformer.plugins.dense",
    "plugformer.plugins.fused",
    "plugformer.plugins.bra",
    "plugformer.plugins.local",
    "plugformer.plugins.positional",
    "plugformer.plugins.rope",
    "plugformer.plugins.alibi",
    "plugformer.plugins.t5_bias",
    "plugformer.plugins.feedforward",
    "plugformer.plugins.gated_ffn",
    "plugformer.plugins.moe",
    "plugformer.plugins.norms",
    "plugformer.plugins.blocks",
    "plugformer.plugins.models",
    "plugformer.plugins.presets_modern",
    "plugformer.tasks.synthetic",
    "plugformer.tasks.text",
)

STRICT_ENV = "PLUGFORMER_STRICT"
DISABLE_ENV = "PLUGFORMER_DISABLE_PLUGINS"


class PluginError(RuntimeError):
    """A plugin could not be loaded or registered (raised in strict mode and by
    ``Registry.register_plugin``)."""


@attrs.frozen
class PluginInfo:
    """A loaded plugin: its name (entry-point name or module name), the distribution that
    ships it and that distribution's version (None for plugins registered by hand), its module."""

    name: str
    distribution: Optional[str]
    version: Optional[str]
    module: Optional[str]


@attrs.frozen
class PluginFailure:
    """A plugin that failed to import or to register; ``error`` is ``"Type: message"``."""

    name: str
    distribution: Optional[str]
    error: str
    traceback: str = attrs.field(repr=False)


@attrs.frozen
class Candidate:
    """A plugin found but not yet loaded; ``load()`` imports it and returns the plugin object."""

    name: str
    distribution: Optional[str]
    version: Optional[str]
    module: Optional[str]
    load: Callable[[], Any] = attrs.field(repr=False)

    def info(self) -> PluginInfo:
        return PluginInfo(self.name, self.distribution, self.version, self.module)


def builtin_plugins() -> tuple[str, ...]:
    """The built-in plugin modules to load (a function, so that tests can swap the list)."""
    return BUILTIN_PLUGINS


def candidates() -> Iterator[Candidate]:
    """Built-in plugins first, then entry points of the ``plugformer`` group sorted by
    (distribution, name), so that loading order, and with it any conflict, is reproducible."""
    version = distribution_version("plugformer")
    for module in builtin_plugins():
        yield Candidate(
            name=module,
            distribution="plugformer",
            version=version,
            module=module,
            load=_importer(module),
        )
    entry_points = metadata.entry_points(group=ENTRY_POINT_GROUP)
    for entry_point in sorted(entry_points, key=lambda ep: (_dist_name(ep) or "", ep.name)):
        dist = entry_point.dist
        yield Candidate(
            name=entry_point.name,
            distribution=_dist_name(entry_point),
            version=getattr(dist, "version", None),
            module=entry_point.module,
            load=entry_point.load,
        )


def strict_from_env() -> bool:
    """Whether ``PLUGFORMER_STRICT`` asks for plugin failures to raise."""
    return os.environ.get(STRICT_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def disabled_from_env() -> frozenset[str]:
    """The plugin names listed, comma-separated, in ``PLUGFORMER_DISABLE_PLUGINS``."""
    value = os.environ.get(DISABLE_ENV, "")
    return frozenset(name.strip() for name in value.split(",") if name.strip())


def distribution_version(name: str) -> Optional[str]:
    """The installed version of a distribution, or None if it is not installed."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _dist_name(entry_point: metadata.EntryPoint) -> Optional[str]:
    dist = entry_point.dist
    return None if dist is None else dist.metadata["Name"]


def _importer(module: str) -> Callable[[], Any]:
    def load() -> Any:
        return importlib.import_module(module)

    return load
