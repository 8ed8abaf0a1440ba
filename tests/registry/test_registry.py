"""Registry: adding, looking up, listing and describing parts; duplicates; the default registry
(plugins by hand: test_registry_plugins.py)."""

from __future__ import annotations

from typing import ClassVar, Literal, Optional

import pytest
from torch import nn

import plugformer.registry.registry as registry_module
from plugformer.registry.registry import (
    KINDS,
    REQUIRED,
    DuplicatePartError,
    Registry,
    UnknownPartError,
    default_registry,
    register,
)


class BaseKernel(nn.Module):
    supports_mask: ClassVar[bool] = True


class RoutingKernel(BaseKernel):
    """A stand-in kernel class declaring capabilities."""

    supports_causal: ClassVar[bool] = False
    supports_bias: ClassVar[bool] = True
    uses_routing = True
    supports_label = "not a bool, so not a capability"


def bra(
    ctx,
    *,
    region: int = 64,
    topk: int = 4,
    routing: Literal["region", "token", "auto"] = "auto",
    scale: Optional[float] = None,
) -> RoutingKernel:
    """Bi-level routing attention.

    Attends the top-k regions of each query.

    Args:
        region: tokens per region.
        topk: regions each query attends,
            own region included.
    """
    return RoutingKernel()


def dense(ctx, *, scale: Optional[float] = None) -> BaseKernel:
    """Exact attention."""
    return BaseKernel()


def fused(ctx) -> BaseKernel:
    """Attention by SDPA."""
    return BaseKernel()


def other_bra(ctx) -> BaseKernel:
    """Another kernel that wants the name bra."""
    return BaseKernel()


def tiny(*, d_model: int, layers: int = 2) -> nn.Module:
    """A tiny model."""
    return nn.Linear(d_model, d_model)


def make_factory():
    def redefined(ctx) -> BaseKernel:
        return BaseKernel()

    return redefined


@pytest.fixture
def reg() -> Registry:
    registry = Registry()
    for name, factory in [("bra", bra), ("dense", dense), ("fused", fused)]:
        registry.add("attention", name, factory)
    registry.add("model", "tiny", tiny)
    return registry


def test_add_returns_entry_and_get_finds_it(reg):
    part = reg.get("attention", "bra")
    assert (part.kind, part.name, part.factory) == ("attention", "bra", bra)
    assert part.summary == "Bi-level routing attention."
    assert part.source == __name__  # no plugin hook running: the factory's module
    assert part.plugin is None
    assert part.label == "attention:bra"
    assert ("attention", "bra") in reg
    assert ("norm", "bra") not in reg and "bra" not in reg


def test_kinds():
    assert Registry().kinds == KINDS
    assert KINDS == ("attention", "positional", "feedforward", "norm", "block", "model", "task")


def test_list_is_sorted_and_filters_by_kind_and_wildcard(reg):
    assert [p.label for p in reg.list()] == [
        "attention:bra",
        "attention:dense",
        "attention:fused",
        "model:tiny",
    ]
    assert [p.name for p in reg.list("attention")] == ["bra", "dense", "fused"]
    assert [p.name for p in reg.list(pattern="*ra*")] == ["bra"]
    assert [p.name for p in reg.list("attention", "*BRA*")] == ["bra"]
    assert [p.name for p in reg.list(pattern="?use?")] == ["fused"]
    assert reg.list("norm") == []
    assert reg.names("attention") == ["bra", "dense", "fused"]


def test_describe_reads_signature_docstring_and_capabilities(reg):
    desc = reg.describe("attention", "bra")
    assert desc.summary == "Bi-level routing attention."
    assert desc.source == __name__
    assert [a.name for a in desc.args] == ["region", "topk", "routing", "scale"]
    region, topk, routing, scale = desc.args
    assert (region.type, region.type_name, region.default) == (int, "int", 64)
    assert region.doc == "tokens per region."
    assert topk.doc == "regions each query attends, own region included."
    assert routing.type == Literal["region", "token", "auto"]
    assert routing.type_name == "'region' | 'token' | 'auto'"
    assert (scale.type, scale.type_name, scale.default, scale.doc) == (
        Optional[float],
        "float | None",
        None,
        "",
    )
    assert not any(a.required for a in desc.args)
    assert desc.capabilities == {
        "supports_bias": True,
        "supports_causal": False,
        "supports_mask": True,  # inherited
        "uses_routing": True,
    }


def test_describe_model_has_required_argument_and_readable_str(reg):
    desc = reg.describe("model", "tiny")
    d_model, layers = desc.args
    assert d_model.default is REQUIRED and d_model.required
    assert layers.default == 2 and not layers.required
    assert desc.capabilities == {}  # nn.Module declares none

    text = str(reg.describe("attention", "bra"))
    assert text.splitlines()[0] == "attention:bra - Bi-level routing attention."
    assert f"source: {__name__}" in text
    assert "region: int = 64" in text and "tokens per region." in text
    assert "supports_causal: no" in text and "supports_bias: yes" in text
    assert "Attends the top-k regions of each query." in text
    assert "Args:" not in text
    assert "d_model: int (required)" in str(desc)


def test_capabilities_given_to_add_override_declared_ones():
    reg = Registry()
    part = reg.add("attention", "bra", bra, capabilities={"supports_causal": True})
    assert part.capabilities["supports_causal"] is True
    assert part.capabilities["supports_bias"] is True
    with pytest.raises(ValueError, match="start with 'supports_' or 'uses_'"):
        reg.add("attention", "x", dense, capabilities={"causal": True})
    with pytest.raises(ValueError, match="must be True or False"):
        reg.add("attention", "x", dense, capabilities={"supports_causal": 1})


def test_same_factory_again_is_a_no_op(reg):
    before = reg.get("attention", "bra")
    assert reg.add("attention", "bra", bra) is before
    assert reg.get("attention", "bra") is before


def test_redefinition_of_the_same_function_replaces_quietly():
    reg = Registry()
    first, second = make_factory(), make_factory()
    assert first is not second
    reg.add("attention", "redefined", first)
    reg.add("attention", "redefined", second)
    assert reg.get("attention", "redefined").factory is second


def test_different_factory_under_a_taken_name_names_both_sources(reg):
    with pytest.raises(DuplicatePartError) as info:
        reg.add("attention", "bra", other_bra, source="my-plugin")
    message = str(info.value)
    assert "attention 'bra' is already registered by " + __name__ in message
    assert f"{__name__}.bra" in message and f"{__name__}.other_bra" in message
    assert "my-plugin" in message and "replace=True" in message
    assert isinstance(info.value, ValueError)
    assert info.value.existing.factory is bra
    assert reg.get("attention", "bra").factory is bra


def test_replace_overrides(reg):
    part = reg.add("attention", "bra", other_bra, replace=True)
    assert reg.get("attention", "bra") is part and part.factory is other_bra


def test_unknown_name_suggests_close_names(reg):
    with pytest.raises(UnknownPartError) as info:
        reg.get("attention", "brra")
    error = info.value
    assert isinstance(error, LookupError)
    assert (error.kind, error.name) == ("attention", "brra")
    assert error.suggestions == ("bra",)
    assert error.available == ("bra", "dense", "fused")
    assert str(error) == (
        "unknown attention 'brra'; did you mean 'bra'? available: bra, dense, fused"
    )


def test_unknown_name_suggestions_ignore_case(reg):
    with pytest.raises(UnknownPartError) as info:
        reg.describe("attention", "DENSE")
    assert info.value.suggestions[0] == "dense"


def test_unknown_name_without_suggestion_and_empty_kind(reg):
    with pytest.raises(UnknownPartError, match=r"^unknown attention 'xyz'; available: bra, dense"):
        reg.get("attention", "xyz")
    with pytest.raises(UnknownPartError, match="no norm parts are registered"):
        reg.get("norm", "layernorm")


@pytest.mark.parametrize("call", ["add", "get", "list", "describe"])
def test_unknown_kind_lists_kinds_and_suggests(reg, call):
    calls = {
        "add": lambda: reg.add("atention", "x", dense),
        "get": lambda: reg.get("atention", "bra"),
        "list": lambda: reg.list("atention"),
        "describe": lambda: reg.describe("atention", "bra"),
    }
    expected = "unknown kind 'atention'; did you mean 'attention'"
    with pytest.raises(ValueError, match=expected) as info:
        calls[call]()
    assert ", ".join(KINDS) in str(info.value)


@pytest.mark.parametrize("name", ["", "1abc", "a-b", "a b", "bra(x)", "a.b", 3, None])
def test_bad_names_are_refused(name):
    with pytest.raises(ValueError, match="invalid attention name"):
        Registry().add("attention", name, dense)


def test_kwargs_factory_is_refused_with_the_reason():
    def loose(ctx, **kwargs) -> nn.Module:
        return nn.Identity()

    with pytest.raises(ValueError, match=r"\*\*kwargs.*silently swallowed"):
        Registry().add("attention", "loose", loose)


def test_varargs_factory_is_refused():
    def loose(ctx, *sizes: int) -> nn.Module:
        return nn.Identity()

    with pytest.raises(ValueError, match=r"takes \*sizes"):
        Registry().add("feedforward", "loose", loose)


def test_part_factory_must_take_ctx_first():
    def no_ctx(*, d_ff: int = 4) -> nn.Module:
        return nn.Identity()

    with pytest.raises(ValueError, match="first positional parameter, named 'ctx'"):
        Registry().add("feedforward", "no_ctx", no_ctx)
    part = Registry().add("model", "no_ctx", no_ctx)
    assert [a.name for a in part.args] == ["d_ff"]


def test_non_callable_factory_is_refused():
    with pytest.raises(TypeError, match="must be callable"):
        Registry().add("norm", "thing", 3)


def test_class_factory_reads_init_and_capabilities_from_the_class():
    class Window(BaseKernel):
        """Sliding-window attention.

        Args:
            window: keys each query sees.
        """

        supports_causal = True

        def __init__(self, ctx, *, window: int = 128) -> None:
            super().__init__()

    part = Registry().add("attention", "window", Window)
    assert part.summary == "Sliding-window attention."
    assert [(a.name, a.type, a.default, a.doc) for a in part.args] == [
        ("window", int, 128, "keys each query sees.")
    ]
    assert part.capabilities == {"supports_causal": True, "supports_mask": True}


def test_register_decorator_adds_to_default_registry_and_returns_factory(monkeypatch):
    fresh = Registry()
    monkeypatch.setattr(registry_module, "_default", fresh)
    assert default_registry() is fresh

    @register("feedforward", "mine")
    def mine(ctx, *, d_ff: int = 8) -> nn.Module:
        """My feed-forward."""
        return nn.Identity()

    assert callable(mine) and mine.__name__ == "mine"
    assert fresh.get("feedforward", "mine").factory is mine


def test_default_registry_is_one_lazily_loading_registry(monkeypatch):
    calls = []
    monkeypatch.setattr(registry_module, "_default", None)
    monkeypatch.setattr(Registry, "load_plugins", lambda self, **kw: calls.append(self))
    reg = default_registry()
    assert reg is default_registry()
    assert calls == []  # nothing loads at creation
    reg.list()
    assert calls == [reg]
