"""The error raised for anything wrong in a spec, from syntax to impossible combinations.

A `SpecError` carries the spec text and the span of the offending part, and renders a caret
line under it, so that the parser, the resolver and the builder all point at the same place::

    unknown argument 'topc' of attention 'bra'
      transformer_base(attn=bra(region=64, topc=4))
                                           ^^^^
    did you mean 'topk'?
"""

from __future__ import annotations

import unicodedata

__all__ = ["SpecError"]

Span = tuple[int, int]


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
