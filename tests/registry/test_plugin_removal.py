"""A plugin that fails half-way, or is unregistered, leaves the registry exactly as it was
without it: its parts go, the parts it replaced come back, its CLI commands go (issue 12, item 3).

The expected state comes from a log of every definition ever added, read by brute force (a name
stands for the newest definition whose plugin is still registered), not from the registry's
stacks.
"""

from __future__ import annotations

from typing import Any, Callable, Optional
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import plugformer.registry.discovery as discovery
from plugformer.cli import COMMANDS, plugin_commands
from plugformer.hooks import hookimpl
from plugformer.registry.discovery import Candidate
from plugformer.registry.parts import KINDS
from plugformer.registry.registry import DuplicatePartError, Registry

#: The names plugins fight over; ``dense``, ``local`` and ``plain`` exist before any random plugin.
KEYS = (("attention", "dense"), ("attention", "local"), ("attention", "fresh"),
        ("norm", "plain"), ("norm", "other"))
SOLO = ("attention", "solo")  # added outside any plugin: no plugin removal touches it


def make_factory(definition: int) -> Callable[..., Any]:
    """A new factory object; factories of one ``definition`` are one function defined again."""

    def factory(ctx):
        """A stand-in part."""

    factory.__qualname__ = f"definition_{definition}"
    factory.definition = definition
    return factory


Add = tuple[str, str, Callable[..., Any], bool]  # kind, name, factory, replace


class Plugin:
    """Adds its parts in order with ``registry.add``; raises instead of the add at ``fail_at``
    (``len(adds)``: after all of them), never when ``fail_at`` is None."""

    def __init__(self, name: str, adds: list[Add], fail_at: Optional[int]) -> None:
        self.name, self.adds, self.fail_at = name, adds, fail_at

    @hookimpl
    def plugformer_register(self, registry) -> None:
        for index, (kind, name, factory, replace) in enumerate(self.adds):
            if index == self.fail_at:
                raise RuntimeError(f"{self.name} fails half-way")
            registry.add(kind, name, factory, replace=replace)
        if self.fail_at == len(self.adds):
            raise RuntimeError(f"{self.name} fails at the end")


class PluginWithCommand(Plugin):
    @hookimpl
    def plugformer_register_commands(self, commands) -> None:
        commands.add(f"cmd-{self.name}", lambda args: 0, help="a plugin's command")


class Log:
    """The reference: every definition added by a plugin that loaded (or by hand), in order."""

    def __init__(self) -> None:
        self.entries: list[tuple[Optional[str], str, str, Callable[..., Any]]] = []
        self.live: list[str] = []  # registered plugins, in loading order
        self.with_commands: set[str] = set()

    def visible(self, kind: str, name: str, pending=()) -> Optional[tuple[Optional[str], Callable]]:
        """(owner, factory) of the newest definition of ``kind:name`` whose owner is live."""
        live = {None, *self.live, *(owner for owner, *_ in pending)}
        for owner, k, n, factory in reversed([*self.entries, *pending]):
            if (k, n) == (kind, name) and owner in live:
                return owner, factory
        return None

    def load(self, plugin: Plugin) -> bool:
        """Whether ``plugin`` loads; if it does, log its definitions."""
        pending: list[tuple[Optional[str], str, str, Callable[..., Any]]] = []
        for index, (kind, name, factory, replace) in enumerate(plugin.adds):
            if index == plugin.fail_at:
                return False
            current = self.visible(kind, name, pending)
            if current is not None and not replace:
                if current[1] is factory:
                    continue
                if current[1].definition != factory.definition:
                    return False  # DuplicatePartError
            pending.append((plugin.name, kind, name, factory))
        if plugin.fail_at == len(plugin.adds):
            return False
        self.entries += pending
        self.live.append(plugin.name)
        if isinstance(plugin, PluginWithCommand):
            self.with_commands.add(plugin.name)
        return True

    def parts(self) -> list[tuple]:
        """(kind, name, factory, source, plugin) of every visible part, sorted by kind and name."""
        keys = {(k, n) for _, k, n, _ in self.entries}
        found = []
        for kind, name in sorted(keys, key=lambda key: (KINDS.index(key[0]), key[1])):
            current = self.visible(kind, name)
            if current is not None:
                owner, factory = current
                found.append((kind, name, factory, owner or __name__, owner))
        return found

    def commands(self) -> list[str]:
        return [f"cmd-{name}" for name in self.live if name in self.with_commands]


def parts_of(registry: Registry) -> list[tuple]:
    return [(p.kind, p.name, p.factory, p.source, p.plugin) for p in registry.list()]


def full_state(registry: Registry) -> tuple:
    """Parts (every field, listing order), plugins, failures and the plugins behind each hook."""
    return (
        registry.list(),
        registry.plugins,
        registry.failures,
        [impl.plugin_name for impl in registry.hook.plugformer_register.get_hookimpls()],
        [impl.plugin_name for impl in registry.hook.plugformer_register_commands.get_hookimpls()],
    )


def assert_matches(registry: Registry, log: Log) -> None:
    assert parts_of(registry) == log.parts()
    assert [p.name for p in registry.plugins] == log.live
    assert list(plugin_commands(registry)) == [*COMMANDS, *log.commands()]


BUILTIN = Plugin("builtin", [("attention", "dense", make_factory(0), False),
                             ("attention", "local", make_factory(1), False),
                             ("norm", "plain", make_factory(2), False)], None)
SOLO_FACTORY = make_factory(3)


def base(log: Log) -> Registry:
    """A registry holding the plugin "builtin" (dense, local, plain) and a part added by hand."""
    registry = Registry()
    registry.register_plugin(BUILTIN, name="builtin")
    assert log.load(BUILTIN)
    registry.add(*SOLO, SOLO_FACTORY)
    log.entries.append((None, *SOLO, SOLO_FACTORY))
    return registry


adds = st.lists(
    st.tuples(
        st.sampled_from(KEYS),
        st.one_of(st.just("visible"), st.integers(0, 2)),  # the visible factory, or a definition
        st.booleans(),  # replace
    ),
    max_size=4,
)
fail_at = st.one_of(st.none(), st.integers(0, 4))
load_step = st.tuples(st.just("load"), adds, fail_at, st.booleans())  # last: adds a CLI command
unregister_step = st.tuples(st.just("unregister"), st.integers(0, 7))
steps = st.lists(st.one_of(load_step, unregister_step), max_size=10)


def build_plugin(name: str, step: tuple, registry: Registry) -> Plugin:
    _, planned, fail_at, commands = step
    made: list[Add] = []
    for (kind, part_name), how, replace in planned:
        visible = registry.get(kind, part_name).factory if (kind, part_name) in registry else None
        if how == "visible" and visible is not None:
            factory = visible
        else:
            factory = make_factory(0 if how == "visible" else how)
        made.append((kind, part_name, factory, replace))
    fail_at = None if fail_at is None else min(fail_at, len(made))
    return (PluginWithCommand if commands else Plugin)(name, made, fail_at)


@settings(max_examples=300, deadline=None)
@given(steps)
def test_each_step_adds_exactly_one_plugin_or_leaves_the_registry_as_it_was(steps):
    log = Log()
    registry = base(log)
    assert_matches(registry, log)
    before_load: dict[str, tuple[tuple, list[str]]] = {}  # state and live plugins before loading
    for number, step in enumerate(steps):
        before = full_state(registry)
        if step[0] == "load":
            name = f"p{number}"
            plugin = build_plugin(name, step, registry)
            live_before = list(log.live)
            if log.load(plugin):
                registry.register_plugin(plugin, name=name)
                mine = {(kind, part_name) for kind, part_name, *_ in plugin.adds}
                assert [p for p in registry.list() if (p.kind, p.name) not in mine] == [
                    p for p in before[0] if (p.kind, p.name) not in mine
                ]
                before_load[name] = (before, live_before)
            else:
                with pytest.raises((RuntimeError, DuplicatePartError)):
                    registry.register_plugin(plugin, name=name)
                assert full_state(registry) == before
        elif log.live:
            name = log.live[step[1] % len(log.live)]
            registry.unregister_plugin(name)
            log.live.remove(name)
            if name in before_load and before_load[name][1] == log.live:
                assert full_state(registry) == before_load[name][0]
        assert_matches(registry, log)


@settings(max_examples=100, deadline=None)
@given(st.lists(load_step, max_size=6))
def test_plugins_from_entry_points_load_or_are_recorded_and_leave_no_trace(steps):
    log = Log()
    registry = base(log)
    plugins = [build_plugin(f"p{number}", step, registry) for number, step in enumerate(steps)]
    loaded = [plugin.name for plugin in plugins if log.load(plugin)]
    found = [
        Candidate(name=p.name, distribution="dist", version="1.0", module=__name__,
                  load=lambda p=p: p)
        for p in plugins
    ]
    with mock.patch.object(discovery, "candidates", lambda: iter(found)):
        registry.load_plugins(strict=False, disable=())
    assert [p.name for p in registry.plugins] == ["builtin", *loaded]
    assert [f.name for f in registry.failures] == [p.name for p in plugins if p.name not in loaded]
    assert_matches(registry, log)


def third_party_dense(ctx):
    """A third party's dense attention."""


def another_dense(ctx):
    """Another third party's dense attention."""


class OverridesDense:
    """The plugin of the issue: replaces the built-in ``dense``, then (if ``fail``) raises."""

    def __init__(self, factory: Callable[..., Any] = third_party_dense, fail: bool = False) -> None:
        self.factory, self.fail = factory, fail

    @hookimpl
    def plugformer_register(self, registry) -> None:
        registry.add("attention", "dense", self.factory, replace=True)
        if self.fail:
            raise RuntimeError("broken plugin")


@pytest.fixture
def builtins() -> Registry:
    registry = Registry(autoload=True)
    assert registry.get("attention", "dense").plugin == "plugformer.plugins.dense"
    return registry


def test_a_plugin_failing_after_overriding_dense_leaves_the_builtin_dense(builtins):
    before = full_state(builtins)
    with pytest.raises(RuntimeError, match="broken plugin"):
        builtins.register_plugin(OverridesDense(fail=True), name="override")
    assert full_state(builtins) == before
    assert "dense" in builtins.names("attention")


def test_an_entry_point_failing_after_overriding_dense_is_recorded_and_dense_stays(monkeypatch):
    reference = Registry()
    reference.load_plugins(strict=False, disable=())
    with_builtins = discovery.candidates

    def candidates():
        yield from with_builtins()
        yield Candidate(name="override", distribution="override-dist", version="1.0",
                        module=__name__, load=lambda: OverridesDense(fail=True))

    monkeypatch.setattr(discovery, "candidates", candidates)
    registry = Registry()
    registry.load_plugins(strict=False, disable=())
    assert registry.list() == reference.list()
    assert registry.plugins == reference.plugins
    assert [(f.name, f.error) for f in registry.failures] == [
        *((f.name, f.error) for f in reference.failures), ("override", "RuntimeError: broken plugin")
    ]


def test_unregistering_a_plugin_that_replaced_dense_brings_the_builtin_back(builtins):
    before = full_state(builtins)
    builtins.register_plugin(OverridesDense(), name="override")
    assert builtins.get("attention", "dense").factory is third_party_dense
    builtins.unregister_plugin("override")
    assert full_state(builtins) == before


def test_overrides_stack_per_name(builtins):
    """A replaces dense, B replaces A's: removing A keeps B's; removing B brings the built-in."""
    builtin_dense = builtins.get("attention", "dense")
    builtins.register_plugin(OverridesDense(third_party_dense), name="A")
    builtins.register_plugin(OverridesDense(another_dense), name="B")
    builtins.unregister_plugin("A")
    dense = builtins.get("attention", "dense")
    assert (dense.factory, dense.source, dense.plugin) == (another_dense, "B", "B")
    builtins.register_plugin(OverridesDense(third_party_dense), name="A")  # A again, over B
    builtins.unregister_plugin("A")
    assert builtins.get("attention", "dense").factory is another_dense
    builtins.unregister_plugin("B")
    assert builtins.get("attention", "dense") == builtin_dense
