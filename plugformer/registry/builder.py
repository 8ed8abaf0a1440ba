"""Resolve a spec against the registry and build modules from it.

``resolve`` checks every name, argument and type (:mod:`plugformer.registry.resolver`), fills in
every default and converts values to their declared types, so the resolved spec is canonical: ``str(resolve(s))`` names the whole
model. ``build`` turns a resolved spec into an ``nn.Module``: part slots reach model factories as
:class:`~plugformer.core.slots.PartFactory` callables, and any error a factory raises comes back
as a :class:`SpecError` pointing at the part (or argument) that caused it.
"""

from __future__ import annotations

import inspect
import warnings
from typing import Any, Optional

import attrs
import torch
from torch import nn

from plugformer.core.context import DEPRECATED_BIAS, BuildContext
from plugformer.core.slots import ArgumentError
from plugformer.registry.errors import SpecError
from plugformer.registry.materialize import check_fits
from plugformer.registry.parts import ArgInfo, Part
from plugformer.registry.registry import Registry, default_registry
from plugformer.registry.resolver import PART_KINDS, Resolver, is_list_type, slot_kind  # PART_KINDS: re-exported, its old home
from plugformer.registry.spec import PerLayer, Spec, parse

RESERVED = ("device", "dtype")


def resolve(spec: str | Spec, *, kind: str = "model", registry: Optional[Registry] = None, check: bool = True) -> Spec:
    """Check ``spec`` against the registry and return it with every default filled in.

    With ``check`` (the default) a model is also built once on the ``meta`` device, which
    allocates no memory, so that impossible combinations (``d_model % heads``, a ``topk`` larger
    than the number of regions, ...) are reported here, before any real tensor exists.

    Raises:
        SpecError: with the spec text and a caret under the offending part.
    """
    registry = registry or default_registry()
    resolved = Resolver(registry).call(_as_spec(spec), kind)
    if check and kind == "model":
        _instantiate(resolved, kind, registry, BuildContext(device="meta"))
    return resolved


def build(
    spec: str | Spec,
    *,
    registry: Optional[Registry] = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    **overrides: Any,
) -> nn.Module:
    """Build a model from a spec; ``overrides`` replace model-level arguments of the spec.

    The model carries its canonical spec as ``model.spec``::

        model = build("transformer_tiny(attn=bra(region=8, topk=2))", vocab=100)

    Raises:
        SpecError: the spec does not resolve or a part refuses its arguments.
        InsufficientMemoryError: the parameters and buffers (counted on the meta device first)
            need more memory than ``device`` has; the message gives both numbers.
    """
    registry = registry or default_registry()
    spec = _as_spec(spec)
    if overrides:
        spec = spec.with_args(**overrides)
    resolved = Resolver(registry).call(spec, "model")
    if torch.device(device or torch.get_default_device()).type != "meta":
        meta = _instantiate(resolved, "model", registry, BuildContext(device="meta", dtype=dtype))
        check_fits(meta, device, what=f"model {resolved.name!r}")
    model = _instantiate(resolved, "model", registry, BuildContext(device=device, dtype=dtype))
    model.spec = resolved
    return model


def build_part(
    kind: str,
    spec: str | Spec,
    *,
    registry: Optional[Registry] = None,
    **context: Any,
) -> nn.Module:
    """Build one part alone; ``context`` holds :class:`BuildContext` fields (d_model, heads, ...).

    ``build_part("attention", "bra(region=16, topk=2)", d_model=64, heads=4)``
    """
    registry = registry or default_registry()
    if "bias" in context:
        warnings.warn(DEPRECATED_BIAS, DeprecationWarning, stacklevel=2)
        context["score_bias"] = context.pop("bias")
    fields = {f.name for f in attrs.fields(BuildContext)}
    unknown = sorted(set(context) - fields)
    if unknown:
        raise TypeError(f"unknown context field(s) {unknown}; accepted: {', '.join(sorted(fields))}")
    resolved = Resolver(registry).call(_as_spec(spec), kind)
    module = _instantiate(resolved, kind, registry, BuildContext(**context))
    module.spec = resolved
    return module


def _as_spec(spec: str | Spec) -> Spec:
    if isinstance(spec, Spec):
        return spec
    if isinstance(spec, str):
        return parse(spec)
    raise TypeError(f"a spec is a string or a Spec, not {type(spec).__name__}")


# ------------------------------------------------------------------------------------ building


@attrs.frozen
class BoundPart:
    """A resolved part ready to build: the :class:`PartFactory` a model factory receives."""

    kind: str
    name: str
    spec: Spec
    part: Part = attrs.field(repr=False)
    kwargs: dict = attrs.field(repr=False, hash=False)

    def __call__(self, ctx: BuildContext, *wired: Any) -> nn.Module:
        kwargs = {k: _for_layer(v, ctx.layer) for k, v in self.kwargs.items()}
        try:
            module = self.part.factory(ctx, *wired, **kwargs) if _takes_ctx(self.part) else self.part.factory(**kwargs)
        except SpecError:
            raise
        except ArgumentError as err:
            written = [a for a in err.arguments if self.spec.arg_span(a) is not None]
            key = written[0] if written else None
            raise self.spec.error(f"{self.kind} {self.name!r}: {err}", key) from None
        except ValueError as err:
            raise self.spec.error(f"{self.kind} {self.name!r}: {err}") from None
        except (TypeError, OverflowError, ZeroDivisionError, IndexError) as err:
            # a value the resolver could not judge (an unannotated argument, a size that
            # overflows torch): still the spec's fault, so still a SpecError, cause attached
            raise self.spec.error(
                f"{self.kind} {self.name!r} cannot be built from these arguments: "
                f"{type(err).__name__}: {err}"
            ) from err
        _check_capabilities(self, module, ctx)
        return module


@attrs.frozen
class PerLayerPart:
    """Per-layer parts ``[a, b]``: layer i is built by item ``i % len``."""

    kind: str
    items: tuple[BoundPart, ...]

    @property
    def name(self) -> str:
        return "[" + ", ".join(item.name for item in self.items) + "]"

    def __call__(self, ctx: BuildContext, *wired: Any) -> nn.Module:
        return self.items[ctx.layer % len(self.items)](ctx, *wired)


def _takes_ctx(part: Part) -> bool:
    params = list(inspect.signature(part.factory).parameters.values())
    return bool(params) and params[0].name == "ctx"


def _for_layer(value: Any, layer: int) -> Any:
    if isinstance(value, PerLayerPart) or not isinstance(value, PerLayer):
        return value
    return _plain(value.for_layer(layer))


def _plain(value: Any) -> Any:
    return [_plain(v) for v in value.items] if isinstance(value, PerLayer) else value


def _check_capabilities(bound: BoundPart, module: nn.Module, ctx: BuildContext) -> None:
    if bound.kind != "attention":
        return
    if ctx.causal and not getattr(module, "supports_causal", True):
        raise bound.spec.error(f"attention {bound.name!r} cannot run causal attention (decoder self-attention)")
    if ctx.score_bias and not getattr(module, "supports_bias", False):
        raise bound.spec.error(
            f"attention {bound.name!r} cannot take the score bias of this positional encoding; "
            "use a kernel that supports_bias (dense, fused) or another positional encoding"
        )


def bind(value: Any, kind: str, registry: Registry) -> Any:
    """A resolved spec (see :func:`resolve`) of a part of ``kind`` as a :class:`BoundPart`: a
    factory ``bound(ctx) -> nn.Module`` whose ``kwargs`` hold the part's arguments with every
    part slot bound in turn (a per-layer list of parts becomes a :class:`PerLayerPart`). Plain
    values come back as they are."""
    if isinstance(value, Spec):
        part = registry.get(kind, value.name)
        kwargs = {}
        for arg in part.args:
            slot, _ = slot_kind(arg.type)
            raw = value.kwargs[arg.name]
            kwargs[arg.name] = bind(raw, slot, registry) if slot else _plain_list(raw, arg)
        return BoundPart(kind, value.name, value, part, kwargs)
    if isinstance(value, PerLayer) and all(isinstance(item, Spec) for item in value.items) and value.items:
        return PerLayerPart(kind, tuple(bind(item, kind, registry) for item in value.items))
    return value


def _plain_list(value: Any, arg: ArgInfo) -> Any:
    return _plain(value) if is_list_type(arg.type) else value


def _instantiate(resolved: Spec, kind: str, registry: Registry, ctx: BuildContext) -> nn.Module:
    return bind(resolved, kind, registry)(ctx)
