"""Names -> parts: the pluggy registry, the spec language and the builder.

``plugformer.registry`` also stands for the default registry: ``plugformer.registry.list()``,
``.get()``, ``.describe()``, ``.add()``, ``.failures`` ... are those of
:func:`~plugformer.registry.registry.default_registry`, which loads the plugins on first use.
"""

from typing import Any

_REGISTRY_ATTRIBUTES = frozenset({
    "add", "get", "list", "names", "describe", "kinds", "plugins", "failures", "disabled",
    "load_plugins", "register_plugin", "unregister_plugin",
})


def __getattr__(name: str) -> Any:
    if name not in _REGISTRY_ATTRIBUTES:
        raise AttributeError(f"module 'plugformer.registry' has no attribute {name!r}")
    from plugformer.registry.registry import default_registry

    return getattr(default_registry(), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | _REGISTRY_ATTRIBUTES)
