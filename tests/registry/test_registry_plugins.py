"""Registry: plugins registered and unregistered by hand; a failing hook leaves nothing behind."""

from __future__ import annotations

import types

import pluggy
import pytest
from torch import nn

from plugformer.hooks import hookimpl
from plugformer.registry.registry import DuplicatePartError, PluginError, Registry


def bra(ctx) -> nn.Module:
    """Routing attention."""
    return nn.Identity()


def other_bra(ctx) -> nn.Module:
    """Another kernel that wants the name bra."""
    return nn.Identity()


def dense(ctx) -> nn.Module:
    """Exact attention."""
    return nn.Identity()


def plain(ctx) -> nn.Module:
    """A plain norm."""
    return nn.Identity()


class AddsBra:
    """A plugin as an object (pluggy accepts modules and objects)."""

    def __init__(self, factory=bra, fail: bool = False) -> None:
        self.factory = factory
        self.fail = fail

    @hookimpl
    def plugformer_register(self, registry) -> None:
        registry.add("attention", "bra", self.factory)
        registry.add("norm", "plain", plain)
        if self.fail:
            raise RuntimeError("half-way through")


def test_register_plugin_attributes_parts_and_unregister_removes_them():
    reg = Registry()
    name = reg.register_plugin(AddsBra(), name="routing")
    assert name == "routing"
    part = reg.get("attention", "bra")
    assert (part.plugin, part.source) == ("routing", "routing")
    assert [(p.name, p.distribution, p.version, p.module) for p in reg.plugins] == [
        ("routing", None, None, __name__)
    ]
    reg.add("attention", "dense", dense)
    reg.unregister_plugin("routing")
    assert ("attention", "bra") not in reg and ("norm", "plain") not in reg
    assert ("attention", "dense") in reg
    assert reg.plugins == []
    with pytest.raises(ValueError, match="no plugin named 'routing'"):
        reg.unregister_plugin("routing")


def test_register_plugin_module_defaults_to_module_name():
    module = types.ModuleType("my_parts")

    @hookimpl
    def plugformer_register(registry):
        registry.add("attention", "dense", dense)

    module.plugformer_register = plugformer_register
    reg = Registry()
    assert reg.register_plugin(module) == "my_parts"
    assert reg.get("attention", "dense").source == "my_parts"
    assert reg.plugins[0].module == "my_parts"


def test_duplicate_across_plugins_names_both_plugins_and_rolls_back():
    reg = Registry()
    reg.register_plugin(AddsBra(), name="first")
    with pytest.raises(DuplicatePartError, match="registered by first.*second tried"):
        reg.register_plugin(AddsBra(other_bra), name="second")
    assert [p.name for p in reg.plugins] == ["first"]
    assert reg.get("attention", "bra").plugin == "first"


def test_failing_hook_leaves_nothing_behind():
    reg = Registry()
    with pytest.raises(RuntimeError, match="half-way"):
        reg.register_plugin(AddsBra(fail=True), name="flaky")
    assert reg.list() == [] and reg.plugins == []
    reg.register_plugin(AddsBra(), name="flaky")  # the name is free again
    assert ("attention", "bra") in reg


def test_plugin_without_marked_hook_is_an_error():
    class Forgetful:
        def plugformer_register(self, registry):
            registry.add("attention", "dense", dense)

    with pytest.raises(PluginError, match="not marked with @plugformer.hookimpl"):
        Registry().register_plugin(Forgetful(), name="forgetful")


def test_plugin_names_are_unique():
    reg = Registry()
    reg.register_plugin(AddsBra(), name="one")
    with pytest.raises(PluginError, match="already registered"):
        reg.register_plugin(AddsBra(), name="one")


def test_misspelled_hook_is_an_error_and_leaves_nothing_registered():
    class Typo:
        @hookimpl
        def plugformer_regster(self, registry) -> None:
            registry.add("attention", "dense", dense)

    reg = Registry()
    with pytest.raises(pluggy.PluginValidationError, match="unknown hook 'plugformer_regster'"):
        reg.register_plugin(Typo(), name="typo")
    reg.register_plugin(AddsBra(), name="fine")  # the failed one left no pending hook behind
    assert [p.name for p in reg.plugins] == ["fine"]
