"""The errors of the registry and the spec language.

`UnknownPartError` and `DuplicatePartError` are raised by the registry's look-ups and additions.
A `SpecError` is raised for anything wrong in a spec, from syntax to impossible combinations. It
carries the spec text and the span of the offending part, and renders a caret line under it, so
that the parser, the resolver and the builder all point at the same place::

    unknown argument 'topc' of attention 'bra'
      transformer_base(attn=bra(region=64, topc=4))
                                           ^^^^
    did you mean 'topk'?
"""

from __future__ import annotations

import unicodedata
from typing import Iterable, Optional

from plugformer.registry.parts import Part, close_matches

__all__ = ["DuplicatePartError", "SpecError", "UnknownPartError"]

Span = tuple[int, int]


class UnknownPartError(LookupError):
    """No part of that kind has that name.

    Attributes:
        kind: the kind looked in (None when every kind was searched).
        name: the name asked for.
        suggestions: registered names close to it (did-you-mean), best first.
        available: every registered name of that kind, sorted.
    """

    def __init__(
        self,
        kind: Optional[str],
        name: str,
        available: Iterable[str],
        suggestions: Optional[Iterable[str]] = None,
    ) -> None:
        self.kind = kind
        self.name = name
        self.available = tuple(sorted(available))
        self.suggestions = tuple(
            close_matches(name, self.available) if suggestions is None else suggestions
        )
        super().__init__(self._message())

    def _message(self) -> str:
        message = f"unknown {self.kind or 'part'} {self.name!r}"
        if self.suggestions:
            message += "; did you mean " + " or ".join(repr(s) for s in self.suggestions) + "?"
        else:
            message += ";"
        if self.kind is None:
            return message.rstrip(";")
        if self.available:
            return message + " available: " + ", ".join(self.available)
        return message + f" no {self.kind} parts are registered"


class DuplicatePartError(ValueError):
    """A different factory is already registered under that kind and name."""

    def __init__(self, message: str, *, existing: Part) -> None:
        super().__init__(message)
        self.existing = existing


class SpecError(ValueError):
    """A spec that cannot be parsed, resolved or built.

    Args:
        message: what is wrong, in one line, with the offending value in it.
        text: the spec text the span refers to. Default: None (no caret line).
        span: ``(start, end)`` character offsets of the offending text in ``text``; a span at
            ``len(text)`` points just past the end (an unexpected end). Default: None.
        hint: one line saying what would be right, e.g. ``did you mean 'bra'?``. Default: None.
    """

    def __init__(
        self,
        message: str,
        text: str | None = None,
        span: Span | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.text = text
        self.span = span
        self.hint = hint

    @property
    def position(self) -> int | None:
        """Offset of the start of the offending text, or None when unknown."""
        return None if self.span is None else self.span[0]

    def __str__(self) -> str:
        lines = [self.message]
        if self.text is not None:
            lines.extend(_excerpt(self.text, self.span))
        if self.hint:
            lines.append(self.hint)
        return "\n".join(lines)

    def __reduce__(self):
        return (type(self), (self.message, self.text, self.span, self.hint))


def _excerpt(text: str, span: Span | None) -> list[str]:
    """The line of ``text`` holding the span's start, and a caret line under the span."""
    if span is None:
        return ["  " + _printable(text)]
    start = min(max(span[0], 0), len(text))
    end = min(max(span[1], start), len(text))
    line_start = text.rfind("\n", 0, start) + 1
    line_end = text.find("\n", start)
    if line_end == -1:
        line_end = len(text)
    line = text[line_start:line_end]
    indent = _width(text[line_start:start])
    width = max(1, _width(text[start:min(end, line_end)]))
    return ["  " + _printable(line), "  " + " " * indent + "^" * width]


def _printable(text: str) -> str:
    """``text`` with control characters shown as spaces, so that the caret line stays aligned."""
    return "".join(ch if ch.isprintable() else " " for ch in text)


def _width(text: str) -> int:
    """Terminal columns taken by ``text``: wide East Asian characters take two."""
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)
