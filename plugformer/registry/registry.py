"""The registry: names -> parts, filled by plugins through one pluggy hook.

Every plugin, built-in or third-party, is a module (or object) with
``@hookimpl def plugformer_register(registry)`` that calls :meth:`Registry.add` once per part.
Plugins are loaded one at a time and their hook is called for them alone, so a failure is
attributed to the plugin that caused it, recorded, and does not stop the others. A plugin that
fails, and a plugin that is unregistered, leaves the registry as it was without it: its parts go
and what they replaced comes back (a stack of definitions per name, see
:mod:`plugformer.registry.table`).
"""

from __future__ import annotations

import fnmatch
import threading
import traceback
import types
from typing import Any, Callable, Iterable, Mapping, Optional, TypeVar

import pluggy

from plugformer.hooks import PROJECT
from plugformer.registry import discovery, hookspecs
from plugformer.registry.discovery import PluginError, PluginFailure, PluginInfo
from plugformer.registry.errors import DuplicatePartError, UnknownPartError
from plugformer.registry.parts import (
    KINDS,
    NAME_PATTERN,
    REQUIRED,
    ArgInfo,
    Part,
    PartDescription,
    check_capabilities,
    close_matches,
    factory_doc,
    factory_label,
    inspect_factory,
    same_definition,
)
from plugformer.registry.table import PartTable

__all__ = [
    "KINDS",
    "REQUIRED",
    "ArgInfo",
    "DuplicatePartError",
    "Part",
    "PartDescription",
    "PluginError",
    "PluginFailure",
    "PluginInfo",
    "Registry",
    "UnknownPartError",
    "default_registry",
    "register",
]

F = TypeVar("F", bound=Callable[..., Any])


class Registry:
    """Parts by kind and name, and the plugins that brought them.

    Args:
        autoload: load the plugins (:meth:`load_plugins`) on first use. The default registry
            does; a fresh ``Registry()`` starts empty, for tests and experiments.
    """

    def __init__(self, *, autoload: bool = False) -> None:
        self._table = PartTable(KINDS)
        self._pm = pluggy.PluginManager(PROJECT)
        self._pm.add_hookspecs(hookspecs)
        self._plugins: dict[str, PluginInfo] = {}
        self._failures: list[PluginFailure] = []
        self._disabled: list[str] = []
        self._current_plugin: Optional[str] = None
        self._autoload = autoload
        self._loaded = False  # loading has started (plugins may use the registry meanwhile)
        self._settled = False  # loading has finished
        self._lock = threading.RLock()

    # -- parts ------------------------------------------------------------------------------

    @property
    def kinds(self) -> tuple[str, ...]:
        """Every kind of part: attention, positional, feedforward, norm, block, model, task."""
        return KINDS

    def add(
        self,
        kind: str,
        name: str,
        factory: Callable[..., Any],
        *,
        replace: bool = False,
        source: Optional[str] = None,
        capabilities: Optional[Mapping[str, bool]] = None,
    ) -> Part:
        """Register ``factory`` as the part ``kind:name`` and return the entry.

        Adding the same factory again changes nothing; a redefinition of the same function
        (same module and qualified name: a reloaded module, a re-run notebook cell) quietly
        replaces the old definition. A different factory under a taken name raises
        :class:`DuplicatePartError` unless ``replace=True``.

        Args:
            kind: one of :attr:`kinds`.
            name: an identifier, ``[A-Za-z_][A-Za-z0-9_]*``, so that specs can name it.
            factory: ``factory(ctx, *, arg: type = default, ...)`` for attention, positional,
                feedforward, norm and block parts; models and tasks take keyword arguments
                (``ctx`` first is optional for them).
            replace: override an existing part of that name on purpose. The part it overrides
                comes back when the plugin that overrode it fails or is unregistered.
            source: who provides the part, for messages. Default: the plugin whose hook is
                running, else the factory's module.
            capabilities: ``supports_*`` / ``uses_*`` flags, merged over those read from the
                factory's return class.
        """
        self._ensure_loaded()
        kind = self._check_kind(kind)
        if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
            raise ValueError(
                f"invalid {kind} name {name!r}: a part name is an identifier "
                "([A-Za-z_][A-Za-z0-9_]*) so that specs can refer to it"
            )
        info = inspect_factory(kind, factory)
        declared = info.capabilities
        if capabilities is not None:
            declared = {**declared, **check_capabilities(capabilities)}
        plugin = self._current_plugin
        part = Part(
            kind=kind,
            name=name,
            factory=factory,
            source=source or plugin or getattr(factory, "__module__", None) or "unknown",
            summary=info.summary,
            capabilities=declared,
            args=info.args,
            plugin=plugin,
        )
        existing = self._table.top(kind, name)
        if existing is not None and not replace:
            if existing.factory is factory:
                return existing
            if not same_definition(existing.factory, factory):
                raise DuplicatePartError(
                    f"{kind} {name!r} is already registered by {existing.source} "
                    f"({factory_label(existing.factory)}); {part.source} tried to register "
                    f"another factory ({factory_label(factory)}) under the same name. Choose "
                    "another name, or pass replace=True to override it on purpose",
                    existing=existing,
                )
        self._table.push(part)
        return part

    def get(self, kind: str, name: str) -> Part:
        """The part ``kind:name``; :class:`UnknownPartError` (with suggestions) if none."""
        self._ensure_loaded()
        part = self._table.top(self._check_kind(kind), name)
        if part is None:
            raise UnknownPartError(kind, str(name), self._table.names(kind))
        return part

    def list(self, kind: Optional[str] = None, pattern: Optional[str] = None) -> list[Part]:
        """Registered parts sorted by (kind, name), of one kind or all, whose name matches the
        case-insensitive wildcard ``pattern`` (``"*bra*"``, ``"rms?norm"``) if given."""
        self._ensure_loaded()
        kinds = KINDS if kind is None else (self._check_kind(kind),)
        return [
            part
            for k in kinds
            for part in self._table.visible(k)
            if pattern is None or fnmatch.fnmatchcase(part.name.lower(), pattern.lower())
        ]

    def names(self, kind: str) -> list[str]:
        """The sorted names registered under ``kind``."""
        self._ensure_loaded()
        return self._table.names(self._check_kind(kind))

    def describe(self, kind: str, name: str) -> PartDescription:
        """Summary, documentation, arguments (types, defaults, docs), capabilities and source
        of ``kind:name``; ``str()`` of the result is a readable block."""
        part = self.get(kind, name)
        return PartDescription(
            kind=part.kind,
            name=part.name,
            summary=part.summary,
            doc=factory_doc(part.factory),
            args=part.args,
            capabilities=dict(part.capabilities),
            source=part.source,
        )

    def __contains__(self, key: object) -> bool:
        """``("attention", "bra") in registry``."""
        if not (isinstance(key, tuple) and len(key) == 2):
            return False
        self._ensure_loaded()
        kind, name = key
        return self._table.has_kind(kind) and self._table.top(kind, name) is not None

    def __repr__(self) -> str:
        return (
            f"<Registry: {len(self._table)} parts from {len(self._plugins)} plugins, "
            f"{len(self._failures)} failures>"
        )

    # -- plugins ----------------------------------------------------------------------------

    @property
    def plugins(self) -> list[PluginInfo]:
        """The plugins registered so far, in loading order."""
        self._ensure_loaded()
        return list(self._plugins.values())

    @property
    def failures(self) -> list[PluginFailure]:
        """The plugins that failed to import or register, with their errors."""
        self._ensure_loaded()
        return list(self._failures)

    @property
    def disabled(self) -> list[str]:
        """The plugins skipped because ``PLUGFORMER_DISABLE_PLUGINS`` named them."""
        self._ensure_loaded()
        return list(self._disabled)

    def load_plugins(
        self, *, strict: Optional[bool] = None, disable: Optional[Iterable[str]] = None
    ) -> None:
        """Load the built-in plugins, then every ``plugformer`` entry point, one by one.

        A plugin that fails to import or register is recorded in :attr:`failures` (its parts
        are removed, the parts it replaced come back) and the others keep loading. Loading happens once per registry;
        later calls do nothing.

        Args:
            strict: raise :class:`PluginError` on the first failure. Default: from
                ``PLUGFORMER_STRICT``.
            disable: plugin names (entry-point or built-in module names) or distribution
                names to skip. Default: from ``PLUGFORMER_DISABLE_PLUGINS``.
        """
        with self._lock:
            if self._loaded:
                return
            self._loaded = True
            strict = discovery.strict_from_env() if strict is None else strict
            skip = discovery.disabled_from_env() if disable is None else frozenset(disable)
            try:
                for candidate in discovery.candidates():
                    if candidate.name in skip or candidate.distribution in skip:
                        self._disabled.append(candidate.name)
                        continue
                    self._load_one(candidate, strict)
            finally:
                self._settled = True

    def register_plugin(self, plugin: Any, name: Optional[str] = None) -> str:
        """Register a plugin module or object by hand and run its hook; return its name.

        For tests and notebooks. Errors propagate (nothing is recorded), and a plugin whose
        hook fails leaves the registry as it was.
        """
        self._ensure_loaded()
        name = name or self._pm.get_canonical_name(plugin)
        is_module = isinstance(plugin, types.ModuleType)
        module = plugin.__name__ if is_module else type(plugin).__module__
        self._register(plugin, name, PluginInfo(name, None, None, module))
        return name

    def unregister_plugin(self, name: str) -> None:
        """Remove a plugin, every part it added and its hooks (its CLI commands); the parts it
        replaced come back, unless a plugin registered later replaced them in turn."""
        self._ensure_loaded()
        if name not in self._plugins:
            known = ", ".join(self._plugins) or "none"
            raise ValueError(f"no plugin named {name!r} is registered; registered: {known}")
        self._pm.unregister(name=name)
        self._table.remove_plugin(name)
        del self._plugins[name]

    @property
    def hook(self) -> pluggy.HookRelay:
        """The hooks of the loaded plugins, e.g. ``registry.hook.plugformer_register_commands``."""
        self._ensure_loaded()
        return self._pm.hook

    # -- internals --------------------------------------------------------------------------

    def _load_one(self, candidate: discovery.Candidate, strict: bool) -> None:
        """Import and register one plugin; record a failure, or raise it if ``strict``."""
        try:
            self._register(candidate.load(), candidate.name, candidate.info())
        except Exception as exc:
            failure = PluginFailure(
                name=candidate.name,
                distribution=candidate.distribution,
                error=f"{type(exc).__name__}: {exc}",
                traceback=traceback.format_exc(),
            )
            self._failures.append(failure)
            if strict:
                raise PluginError(
                    f"plugin {candidate.name!r} (distribution "
                    f"{candidate.distribution or 'unknown'}) failed to load: {failure.error}"
                ) from exc

    def _register(self, plugin: Any, name: str, info: PluginInfo) -> None:
        """Register ``plugin`` with pluggy and call its hook alone; undo everything on error."""
        if name in self._plugins:
            raise PluginError(
                f"a plugin named {name!r} is already registered "
                f"(distribution {self._plugins[name].distribution or 'none'})"
            )
        self._pm.register(plugin, name=name)
        try:
            self._pm.check_pending()
            if not any(impl.plugin is plugin for caller in vars(self._pm.hook).values()
                       for impl in caller.get_hookimpls()):
                hint = (
                    ": its plugformer_register is not marked with @plugformer.hookimpl"
                    if hasattr(plugin, "plugformer_register")
                    else ""
                )
                raise PluginError(f"plugin {name!r} implements no plugformer hook (plugformer_register, ...){hint}")
            others = [p for p in self._pm.get_plugins() if p is not plugin]
            call_alone = self._pm.subset_hook_caller("plugformer_register", remove_plugins=others)
            previous, self._current_plugin = self._current_plugin, name
            try:
                call_alone(registry=self)
            finally:
                self._current_plugin = previous
        except BaseException:
            self._pm.unregister(plugin)
            self._table.remove_plugin(name)
            raise
        self._plugins[name] = info

    def _check_kind(self, kind: str) -> str:
        if not self._table.has_kind(kind):
            suggestions = close_matches(str(kind), KINDS)
            hint = f"; did you mean {suggestions[0]!r}?" if suggestions else ""
            raise ValueError(f"unknown kind {kind!r}{hint} (kinds: {', '.join(KINDS)})")
        return kind

    def _ensure_loaded(self) -> None:
        """Autoload: the first use loads the plugins; other threads wait until loading ends,
        while the loading thread itself (a plugin's hook calling ``add``) goes on."""
        if self._autoload and not self._settled:
            with self._lock:
                self.load_plugins()


_default: Optional[Registry] = None
_default_lock = threading.Lock()


def default_registry() -> Registry:
    """The process-wide registry; its plugins load on first use (not at import, so that
    plugins may import plugformer)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Registry(autoload=True)
        return _default


def register(
    kind: str,
    name: str,
    *,
    replace: bool = False,
    capabilities: Optional[Mapping[str, bool]] = None,
) -> Callable[[F], F]:
    """Decorator: add the factory to the default registry and return it unchanged::

        @plugformer.register("attention", "windowed")
        def windowed(ctx, *, window: int = 128) -> WindowedAttention:
            '''Sliding-window attention.'''
            return WindowedAttention(window=window, **ctx.factory_kwargs)
    """

    def decorator(factory: F) -> F:
        default_registry().add(kind, name, factory, replace=replace, capabilities=capabilities)
        return factory

    return decorator
