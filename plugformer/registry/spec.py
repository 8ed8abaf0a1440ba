"""The spec language: one line of text that names a model and its parts.

::

    spec   := call
    call   := NAME [ "(" [ kwarg ("," kwarg)* [","] ] ")" ]
    kwarg  := NAME "=" value
    value  := INT | FLOAT | "true" | "false" | "none" | STRING | call | list | choice
    list   := "[" [ value ("," value)* [","] ] "]"      per-layer values
    choice := "{" value ("," value)+ [","] "}"           alternatives, see `expand`

This module is syntax only: `parse` turns text into frozen `Spec` trees, `str(spec)` prints
the canonical text (``parse(str(s)) == s``), `expand` multiplies out the choices. Checking names,
defaults and types against the registry is the resolver's job; it raises the same `SpecError`,
pointing at the spans that the parser records on every node.

Numbers are written as in Python (``-2``, ``1e-5``, ``.5``); strings in single or double quotes
with backslash escapes (``\\\\ \\' \\" \\n \\t \\r \\xhh \\uhhhh \\Uhhhhhhhh``). ``true``,
``false`` and ``none`` are values, except as the top-level part name or when called
(``none()``); any other bare name is a call without arguments.
"""

from __future__ import annotations

import itertools
import math

import attrs

from plugformer.registry.errors import SpecError
from plugformer.registry.spec_model import (
    A_VALUE, KEYWORDS, MAX_DEPTH, ArgSpan, Choice, PerLayer, Span, Spec, Value, format_spec,
)
from plugformer.registry.spec_parser import parse

__all__ = [
    "A_VALUE", "KEYWORDS", "MAX_DEPTH", "ArgSpan", "Choice", "PerLayer", "Span", "Spec",
    "SpecError", "Value", "expand", "format_spec", "parse",
]


# ----------------------------------------------------------------------------- expanding


def expand(spec: str | Spec, *, max_variants: int = 10_000) -> list[Spec]:
    """One spec per combination of ``{...}`` choices, at any depth, in written order.

    The first choice varies slowest, as in `itertools.product`; a spec without choices gives
    ``[spec]``. More than ``max_variants`` combinations is an error, raised before building any.
    """
    root = parse(spec) if isinstance(spec, str) else spec
    count = _count(root)
    if count > max_variants:
        raise SpecError(
            f"the spec expands to {count} variants, more than max_variants={max_variants}",
            root.source, root.span, hint="remove some {...} choices or raise max_variants",
        )
    if count == 1:
        return [root]
    return [variant for variant, _ in _expand(root, root.span)]


def _count(value: Value) -> int:
    if isinstance(value, Spec):
        return math.prod(_count(arg) for _, arg in value.args)
    if isinstance(value, PerLayer):
        return math.prod(_count(item) for item in value.items)
    if isinstance(value, Choice):
        return sum(_count(option) for option in value.options)
    return 1


def _expand(value: Value, span: Span | None) -> list[tuple[Value, Span | None]]:
    """Every choice-free variant of ``value``, each with the span of the text it came from."""
    if isinstance(value, Choice):
        spans = _item_spans(value.item_spans, len(value.options))
        return [found for option, at in zip(value.options, spans) for found in _expand(option, at)]
    if isinstance(value, PerLayer):
        spans = _item_spans(value.item_spans, len(value.items))
        per_item = [_expand(item, at) for item, at in zip(value.items, spans)]
        return [
            (PerLayer([v for v, _ in combo], span=span, item_spans=tuple(at for _, at in combo)),
             span)
            for combo in itertools.product(*per_item)
        ]
    if isinstance(value, Spec):
        arg_spans = dict(value.arg_spans)
        per_arg = []
        for key, arg in value.args:
            written = arg_spans.get(key)
            per_arg.append(_expand(arg, written.value if written else None))
        variants = []
        for combo in itertools.product(*per_arg):
            args = [(key, v) for (key, _), (v, _) in zip(value.args, combo)]
            spans = tuple(
                (key, ArgSpan(arg_spans[key].name, at))
                for (key, _), (_, at) in zip(value.args, combo) if key in arg_spans
            )
            variants.append((attrs.evolve(value, args=args, arg_spans=spans), span))
        return variants
    return [(value, span)]


def _item_spans(spans: tuple[Span | None, ...], count: int) -> tuple[Span | None, ...]:
    return spans if len(spans) == count else (None,) * count

