"""Check a spec against the registry: names, arguments, types, defaults (see :func:`resolve`
in :mod:`plugformer.registry.builder`, which also builds on the meta device).

:class:`Resolver` walks a parsed spec and returns it canonical: every default filled in, every
value converted to its declared type, part slots resolved in turn. Anything that parses but does
not type-check (a list, choice, string, number or call where the argument takes something else,
at any depth) is a :class:`SpecError` with a caret under the offending text.
"""

from __future__ import annotations

import difflib
import inspect
import types
import typing
from typing import Any, Literal, Optional, Union

import attrs

from plugformer.core.slots import Slot
from plugformer.registry.errors import SpecError
from plugformer.registry.parts import ArgInfo
from plugformer.registry.registry import Registry, UnknownPartError
from plugformer.registry.spec import ArgSpan, Choice, PerLayer, Spec, parse

__all__ = ["PART_KINDS", "Resolver", "is_list_type", "slot_kind"]

PART_KINDS = ("attention", "positional", "feedforward", "norm", "block")


def slot_kind(tp: Any) -> tuple[Optional[str], bool]:
    """(part kind, optional) of a factory argument's type ``tp``: the kind when ``tp`` is a part
    slot (``Annotated[..., Slot(kind)]``, maybe Optional), else None."""
    optional = False
    if typing.get_origin(tp) in (Union, types.UnionType):
        members = [a for a in typing.get_args(tp) if a is not type(None)]
        optional = len(members) < len(typing.get_args(tp))
        if len(members) != 1:
            return None, optional
        tp = members[0]
    if typing.get_origin(tp) is typing.Annotated:
        for meta in tp.__metadata__:
            if isinstance(meta, Slot):
                return meta.kind, optional
    return None, optional


class Resolver:
    """Resolves specs against ``registry``: ``Resolver(registry).call(spec, kind)``."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def call(self, spec: Spec, kind: str) -> Spec:
        try:
            part = self.registry.get(kind, spec.name)
        except UnknownPartError as err:
            hint = f"did you mean {_quoted(err.suggestions)}?" if err.suggestions else None
            raise spec.error(
                f"unknown {kind} {spec.name!r}; available: {', '.join(err.available) or 'none'}",
                hint=hint,
            ) from None
        accepted = {arg.name: arg for arg in part.args}
        for key in spec.kwargs:
            if key not in accepted:
                close = difflib.get_close_matches(key, list(accepted), n=1)
                raise spec.error(
                    f"unknown argument {key!r} of {kind} {spec.name!r}; accepted: "
                    f"{', '.join(accepted) or 'none'}",
                    key,
                    at="name",
                    hint=f"did you mean {close[0]!r}?" if close else None,
                )
        args = []
        for arg in part.args:
            given = key_given = arg.name in spec.kwargs
            if given:
                value = spec.kwargs[arg.name]
            elif arg.required:
                raise spec.error(f"{kind} {spec.name!r} needs argument {arg.name!r} ({arg.type_name})")
            else:
                value = arg.default
            args.append((arg.name, self.value(value, arg, spec, kind, key_given, per_layer_ok=kind in PART_KINDS)))
        return Spec(spec.name, args, span=spec.span, arg_spans=spec.arg_spans, source=spec.source)

    def value(self, value: Any, arg: ArgInfo, owner: Spec, kind: str, given: bool, *, per_layer_ok: bool) -> Any:
        where = f"argument {arg.name!r} of {kind} {owner.name!r}"
        span = _value_span(owner, arg.name if given else None)
        slot, optional = slot_kind(arg.type)
        _refuse_choices(value, where, owner, span, into_calls=slot is None)
        if slot is not None:
            if isinstance(value, PerLayer):  # a part slot is per-layer at every level
                return self.per_layer(value, where, owner, span, lambda item, at: self.slot(item, slot, False, where, owner, at))
            return self.slot(value, slot, optional, where, owner, span)
        if isinstance(value, PerLayer) and not is_list_type(arg.type):
            if not per_layer_ok:
                raise _error(owner, f"{where} takes one value, not a per-layer list", span)
            return self.per_layer(value, where, owner, span, lambda item, at: self.scalar(item, arg.type, where, owner, at))
        return self.scalar(value, arg.type, where, owner, span)

    def per_layer(self, value: PerLayer, where: str, owner: Spec, span: Optional[tuple[int, int]], item_value: Any) -> PerLayer:
        """A per-layer list ``[a, b]``: one item per layer, never a list itself."""
        if not value.items:
            raise _error(owner, f"{where}: an empty per-layer list has no value for any layer", span)
        items = []
        for item, at in zip(value.items, _item_spans(value, span)):
            if isinstance(item, PerLayer):
                raise _error(
                    owner, f"{where}: per-layer lists do not nest, got {_show(item)} inside {_show(value)}",
                    at, hint="layer i takes item i % len of one flat list, e.g. [dense, fused]",
                )
            items.append(item_value(item, at))
        return PerLayer(items, span=value.span, item_spans=value.item_spans)

    def slot(self, value: Any, kind: str, optional: bool, where: str, owner: Spec, span: Optional[tuple[int, int]]) -> Any:
        if value is None:
            if optional:
                return None
            if (kind, "none") in self.registry:  # `pe=none` reads as the value none: the part
                return self.call(Spec("none"), kind)
            raise _error(owner, f"{where} needs a {kind} part, got none", span)
        if isinstance(value, str):
            return self.string_part(value, kind, where, owner, span)
        if isinstance(value, Spec):
            return self.call(value, kind)
        raise _error(owner, f"{where} needs a {kind} part (a name or name(...)), got {_show(value)}", span)

    def string_part(self, text: str, kind: str, where: str, owner: Spec, span: Optional[tuple[int, int]]) -> Spec:
        """A part written as a string (a Python default such as ``"relu(d_ff=256)"``). Written
        inside a spec's text, any error in it points at the string there."""
        inner = span is not None and owner.source is not None
        try:
            parsed = parse(text)
            if inner:
                parsed = _relocate(parsed, owner.source, span)
            return self.call(parsed, kind)
        except SpecError as err:
            if not inner or err.text == owner.source:
                raise
            raise _error(owner, f"{where}: in the string {text!r}: {err.message}", span, hint=err.hint) from None

    def scalar(self, value: Any, tp: Any, where: str, owner: Spec, span: Optional[tuple[int, int]]) -> Any:
        try:
            return _convert(value, tp)
        except _Mismatch as err:
            raise _error(owner, f"{where} must be {err.expected}, got {_show(value)}", span, hint=err.hint) from None


def _value_span(owner: Spec, key: Optional[str]) -> Optional[tuple[int, int]]:
    """Where argument ``key``'s value was written in ``owner.source``, else the whole call."""
    written = None if key is None else owner.arg_span(key)
    return written.value if written is not None else owner.span


def _item_spans(value: PerLayer, span: Optional[tuple[int, int]]) -> tuple[Optional[tuple[int, int]], ...]:
    if len(value.item_spans) == len(value.items):
        return tuple(at if at is not None else span for at in value.item_spans)
    return (span,) * len(value.items)


def _error(owner: Spec, message: str, span: Optional[tuple[int, int]], *, hint: Optional[str] = None) -> SpecError:
    return SpecError(message, owner.source, span if span is not None else owner.span, hint)


def _refuse_choices(value: Any, where: str, owner: Spec, span: Optional[tuple[int, int]], *, into_calls: bool) -> None:
    """A choice ``{a, b}`` inside ``value`` (inside its calls too when ``into_calls``; a part's
    own arguments are checked when the part is resolved) is an error at the choice."""
    if isinstance(value, Choice):
        at = value.span if value.span is not None and owner.source is not None else span
        raise _error(owner, f"{where} holds a choice {value}; expand() the spec (or use compare) first", at)
    if isinstance(value, PerLayer):
        for item, at in zip(value.items, _item_spans(value, span)):
            _refuse_choices(item, where, owner, at, into_calls=into_calls)
    if isinstance(value, Spec) and into_calls:
        for key, item in value.args:
            at = _value_span(value, key) if value.source is not None else span
            _refuse_choices(item, where, owner, at, into_calls=True)


def _relocate(value: Any, source: str, span: tuple[int, int]) -> Any:
    """``value`` parsed from a string written at ``span`` of ``source``: every span of it set
    to that string, so that errors inside it point at the string in ``source``."""
    if isinstance(value, Spec):
        return attrs.evolve(
            value,
            args=[(key, _relocate(item, source, span)) for key, item in value.args],
            span=span, source=source,
            arg_spans=tuple((key, ArgSpan(span, span)) for key, _ in value.args),
        )
    if isinstance(value, PerLayer):
        items = [_relocate(item, source, span) for item in value.items]
        return PerLayer(items, span=span, item_spans=(span,) * len(items))
    if isinstance(value, Choice):
        return Choice([_relocate(item, source, span) for item in value.options], span=span)
    return value


class _Mismatch(Exception):
    def __init__(self, expected: str, hint: Optional[str] = None) -> None:
        self.expected = expected
        self.hint = hint


def is_list_type(tp: Any) -> bool:
    return typing.get_origin(tp) in (list, tuple, typing.Sequence) or tp in (list, tuple)


def _convert(value: Any, tp: Any) -> Any:
    """``value`` as type ``tp``, or raise _Mismatch saying what was expected."""
    if tp is Any or tp is inspect.Parameter.empty:
        return value
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        members = typing.get_args(tp)
        if value is None and type(None) in members:
            return None
        errors = []
        for member in members:
            if member is type(None):
                continue
            try:
                return _convert(value, member)
            except _Mismatch as err:
                errors.append(err.expected)
        raise _Mismatch(" or ".join(errors + (["none"] if type(None) in members else [])))
    if origin is Literal:
        options = typing.get_args(tp)
        text = value.name if isinstance(value, Spec) and value.bare else value
        if text in options:
            return text
        close = difflib.get_close_matches(str(text), [str(o) for o in options], n=1)
        raise _Mismatch(
            "one of " + ", ".join(repr(o) for o in options), f"did you mean {close[0]!r}?" if close else None
        )
    if is_list_type(tp):
        if isinstance(value, (list, tuple)):  # a default written in Python
            value = PerLayer(value)
        if not isinstance(value, PerLayer):
            raise _Mismatch(f"a list [...] ({_type_text(tp)})")
        (item_type,) = typing.get_args(tp)[:1] or (Any,)
        return PerLayer([_convert(item, item_type) for item in value.items], span=value.span)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch("true or false")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _Mismatch("an integer")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                return float(value)
            except OverflowError:
                raise _Mismatch("a number a float can hold (at most about 1.8e308)") from None
        raise _Mismatch("a number")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, Spec) and value.bare:
            return value.name
        raise _Mismatch("a string")
    return value


def _type_text(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _show(value: Any) -> str:
    if isinstance(value, (Spec, PerLayer, Choice)):
        return str(value)
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def _quoted(names) -> str:
    return " or ".join(repr(n) for n in names)
