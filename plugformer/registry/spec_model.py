"""The spec data model: frozen ``Spec`` / ``PerLayer`` / ``Choice`` trees and their canonical
text (``format_spec``, ``str(spec)``). The grammar, parsing and ``expand`` are in
:mod:`plugformer.registry.spec`; the parser (:mod:`plugformer.registry.spec_parser`) imports
this module, never the other way round.
"""

from __future__ import annotations

import math
import string
from collections.abc import Iterable, Mapping
from typing import Union

import attrs

from plugformer.registry.errors import SpecError

__all__ = [
    "A_VALUE", "KEYWORDS", "MAX_DEPTH", "NAME_CHARS", "NAME_START", "ArgSpan", "Choice",
    "PerLayer", "Span", "Spec", "SpecError", "Value", "format_spec",
]

Span = tuple[int, int]
MAX_DEPTH = 100  # brackets open at once; deeper text is an error, never a RecursionError
KEYWORDS = {"true": True, "false": False, "none": None}
A_VALUE = "a value (number, true/false/none, 'string', name, [list] or {choice})"

NAME_START = frozenset(string.ascii_letters + "_")
NAME_CHARS = NAME_START | frozenset(string.digits)
_ESCAPE = {"\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r"}


# ----------------------------------------------------------------------------- data model


def _is_name(text: str) -> bool:
    return bool(text) and text[0] in NAME_START and all(ch in NAME_CHARS for ch in text)


def _check_name(_instance: object, _attribute: object, name: str) -> None:
    if not isinstance(name, str) or not _is_name(name):
        raise SpecError(
            f"{name!r} is not a valid name; use letters, digits and '_', not starting with a digit"
        )


def _check_value(value: object) -> Value:
    """``value`` as one of the types a spec can hold; subclasses become their base type."""
    if value is None or isinstance(value, (Spec, PerLayer, Choice)):
        return value
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise SpecError(f"{value!r} cannot be written in a spec; use a finite number")
        return float(value)
    if isinstance(value, str):
        return str(value)
    hint = " (write per-layer values as PerLayer([...]))" if isinstance(value, list) else ""
    raise TypeError(
        "a spec value is an int, float, bool, None, str, Spec, PerLayer or Choice, "
        f"not {type(value).__name__}{hint}"
    )


def _value_key(value: Value) -> object:
    """Equality key that tells ``1``, ``1.0`` and ``true`` apart (Python's ``==`` does not)."""
    if value is None or isinstance(value, (Spec, PerLayer, Choice)):
        return value
    return (type(value).__name__, value)


def _to_values(values: Iterable[object]) -> tuple[Value, ...]:
    if isinstance(values, (str, Mapping)):
        raise TypeError(f"expected a sequence of values, not {type(values).__name__}")
    return tuple(_check_value(value) for value in values)


def _values_key(values: tuple[Value, ...]) -> tuple[object, ...]:
    return tuple(_value_key(value) for value in values)


def _to_args(
    args: Mapping[str, object] | Iterable[tuple[str, object]],
) -> tuple[tuple[str, Value], ...]:
    pairs = args.items() if isinstance(args, Mapping) else args
    result: list[tuple[str, Value]] = []
    for key, value in pairs:
        _check_name(None, None, key)
        if any(key == seen for seen, _ in result):
            raise SpecError(f"duplicate argument {key!r}")
        result.append((key, _check_value(value)))
    return tuple(result)


def _args_key(args: tuple[tuple[str, Value], ...]) -> tuple[object, ...]:
    return tuple((key, _value_key(value)) for key, value in args)


@attrs.frozen
class ArgSpan:
    """Where one argument was written: the spans of its name and of its value."""

    name: Span
    value: Span


@attrs.frozen
class Spec:
    """A call ``name(key=value, ...)``: a part with its keyword arguments, in written order.

    ``name`` and ``name()`` are equal and both print as ``name``; ``bare`` records which one
    was written (a bare name in a string slot is that string). Spans are ``(start, end)``
    offsets into ``source`` and take no part in equality or hashing.
    """

    name: str = attrs.field(validator=_check_name)
    args: tuple[tuple[str, Value], ...] = attrs.field(default=(), converter=_to_args, eq=_args_key)
    span: Span | None = attrs.field(default=None, eq=False, repr=False, kw_only=True)
    arg_spans: tuple[tuple[str, ArgSpan], ...] = attrs.field(
        default=(), eq=False, repr=False, kw_only=True
    )
    bare: bool = attrs.field(
        default=attrs.Factory(lambda self: not self.args, takes_self=True),
        eq=False, repr=False, kw_only=True,
    )
    source: str | None = attrs.field(default=None, eq=False, repr=False, kw_only=True)

    def __attrs_post_init__(self) -> None:
        if self.bare and self.args:
            raise ValueError(f"Spec {self.name!r} has arguments, so it cannot be bare")

    @property
    def kwargs(self) -> dict[str, Value]:
        """The arguments as a dict, in written order."""
        return dict(self.args)

    def get(self, key: str, default: Value = None) -> Value:
        """The value of argument ``key``, or ``default`` when it is not given."""
        for name, value in self.args:
            if name == key:
                return value
        return default

    def arg_span(self, key: str) -> ArgSpan | None:
        """Where argument ``key`` was written, or None when unknown (not parsed, or added)."""
        return dict(self.arg_spans).get(key)

    def with_args(self, /, **changes: object) -> Spec:
        """A copy with ``changes`` applied: existing keys replaced in place, new ones appended.

        Replaced arguments keep their spans, so that errors still point at what was written.
        """
        args = [(key, changes.pop(key) if key in changes else value) for key, value in self.args]
        args.extend(changes.items())
        return attrs.evolve(self, args=args, bare=self.bare and not args)

    def without(self, *keys: str) -> Spec:
        """A copy without the arguments ``keys`` (keys that are not there are ignored)."""
        drop = set(keys)
        return attrs.evolve(
            self,
            args=[(key, value) for key, value in self.args if key not in drop],
            arg_spans=tuple((key, span) for key, span in self.arg_spans if key not in drop),
        )

    def error(self, message: str, key: str | None = None, *, at: str = "value",
              hint: str | None = None) -> SpecError:
        """A `SpecError` pointing at argument ``key`` (its ``"value"`` or its ``"name"``), or at
        the whole call when ``key`` is None or was not written in ``source``."""
        if at not in ("value", "name"):
            raise ValueError(f"at must be 'value' or 'name', not {at!r}")
        span = self.span
        arg = None if key is None else self.arg_span(key)
        if arg is not None:
            span = arg.name if at == "name" else arg.value
        return SpecError(message, self.source, span, hint)

    def __str__(self) -> str:
        return _format_call(self, nested=False)


@attrs.frozen
class PerLayer:
    """Per-layer values, written ``[a, b]``: layer ``i`` takes item ``i % len(items)``."""

    items: tuple[Value, ...] = attrs.field(default=(), converter=_to_values, eq=_values_key)
    span: Span | None = attrs.field(default=None, eq=False, repr=False, kw_only=True)
    item_spans: tuple[Span | None, ...] = attrs.field(
        default=(), eq=False, repr=False, kw_only=True
    )

    def for_layer(self, index: int) -> Value:
        """The value of layer ``index``: the list repeats when there are more layers than items."""
        if not self.items:
            raise SpecError("an empty per-layer list [] has no value for any layer")
        return self.items[index % len(self.items)]

    def __str__(self) -> str:
        return _format_value(self)


def _check_options(_instance: object, _attribute: object, options: tuple[Value, ...]) -> None:
    if len(options) < 2:
        raise SpecError(f"a choice needs at least two options, got {len(options)}")


@attrs.frozen
class Choice:
    """Alternatives, written ``{a, b}``: `expand` makes one spec for each."""

    options: tuple[Value, ...] = attrs.field(
        converter=_to_values, eq=_values_key, validator=_check_options
    )
    span: Span | None = attrs.field(default=None, eq=False, repr=False, kw_only=True)
    item_spans: tuple[Span | None, ...] = attrs.field(
        default=(), eq=False, repr=False, kw_only=True
    )

    def __str__(self) -> str:
        return _format_value(self)


Value = Union[int, float, bool, None, str, Spec, PerLayer, Choice]


# ----------------------------------------------------------------------------- printing


def format_spec(value: Value) -> str:
    """The canonical text of a spec or of any value in one; `parse` reads a spec back equal."""
    if isinstance(value, Spec):
        return _format_call(value, nested=False)
    return _format_value(_check_value(value))


def _format_call(spec: Spec, *, nested: bool) -> str:
    if spec.args:
        args = ", ".join(f"{key}={_format_value(value)}" for key, value in spec.args)
        return f"{spec.name}({args})"
    if nested and spec.name in KEYWORDS:
        return f"{spec.name}()"
    return spec.name


def _format_value(value: Value) -> str:
    if isinstance(value, Spec):
        return _format_call(value, nested=True)
    if isinstance(value, PerLayer):
        return "[" + ", ".join(_format_value(item) for item in value.items) + "]"
    if isinstance(value, Choice):
        return "{" + ", ".join(_format_value(option) for option in value.options) + "}"
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, int):
        return str(value)
    return _quote(value)


def _quote(text: str) -> str:
    quote = '"' if "'" in text and '"' not in text else "'"
    out = [quote]
    for ch in text:
        if ch in _ESCAPE:
            out.append(_ESCAPE[ch])
        elif ch == quote:
            out.append("\\" + ch)
        elif ch.isprintable():
            out.append(ch)
        elif ord(ch) < 0x100:
            out.append(f"\\x{ord(ch):02x}")
        elif ord(ch) < 0x10000:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    out.append(quote)
    return "".join(out)
