"""The spec language's tokenizer and recursive-descent parser (grammar in
:mod:`plugformer.registry.spec`, data model in :mod:`plugformer.registry.spec_model`).

Hand-written, with no ``eval`` and no Python ``ast``: every error is a :class:`SpecError` with a
caret under the offending text, and nesting is bounded so that no input reaches a RecursionError.
"""

from __future__ import annotations

import itertools
import math
import string

import attrs

from plugformer.registry.errors import SpecError
from plugformer.registry.spec_model import (
    A_VALUE, KEYWORDS, MAX_DEPTH, NAME_CHARS, NAME_START, ArgSpan, Choice, PerLayer, Span, Spec,
    Value,
)

_DIGITS = frozenset(string.digits)
_HEX_ESCAPE_DIGITS = {"x": 2, "u": 4, "U": 8}
_PUNCTUATION = frozenset("()[]{},=")
_UNESCAPE = {"\\": "\\", "'": "'", '"': '"', "n": "\n", "t": "\t", "r": "\r"}


# ----------------------------------------------------------------------------- lexing


@attrs.frozen
class _Token:
    tag: str  # "name", "int", "float", "string", "end", or the punctuation character
    start: int
    end: int
    value: object = None


class _Lexer:
    """Tokens of a spec text, scanned on demand so that the first error in the text wins."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self._peeked: _Token | None = None

    def peek(self) -> _Token:
        if self._peeked is None:
            self._peeked = self._scan()
        return self._peeked

    def next(self) -> _Token:
        token = self.peek()
        self._peeked = None
        return token

    def _error(self, message: str, start: int, end: int, hint: str | None = None) -> SpecError:
        return SpecError(message, self.text, (start, end), hint)

    def _scan(self) -> _Token:
        text, pos = self.text, self.pos
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos == len(text):
            self.pos = pos
            return _Token("end", pos, pos)
        ch = text[pos]
        if ch in _PUNCTUATION:
            token = _Token(ch, pos, pos + 1)
        elif ch in NAME_START:
            end = pos + 1
            while end < len(text) and text[end] in NAME_CHARS:
                end += 1
            token = _Token("name", pos, end, text[pos:end])
        elif ch in _DIGITS or ch in "-.":
            token = self._number(pos)
        elif ch in "'\"":
            token = self._string(pos)
        else:
            shown = repr(ch) if ch.isprintable() else f"{ch!r} (U+{ord(ch):04X})"
            raise self._error(f"unexpected character {shown}", pos, pos + 1, hint=(
                "a spec is written name(key=value, ...); quote other text as a 'string'"))
        self.pos = token.end
        return token

    def _digits(self, pos: int) -> int:
        while pos < len(self.text) and self.text[pos] in _DIGITS:
            pos += 1
        return pos

    def _number(self, start: int) -> _Token:
        text = self.text
        pos = start + (text[start] == "-")
        integer_end = self._digits(pos)
        end = integer_end
        if end < len(text) and text[end] == ".":
            end = self._digits(end + 1)
        if integer_end == pos and end <= pos + 1:
            if text[start] == "-":
                raise self._error("expected a number after '-'", start, start + 1)
            raise self._error("unexpected character '.'", start, start + 1,
                              hint="names cannot contain '.'; quote the text as a 'string'")
        valid = True
        if end < len(text) and text[end] in "eE":
            end += 1 + (end + 1 < len(text) and text[end + 1] in "+-")
            exponent = end
            end = self._digits(end)
            valid = end > exponent
        tail = end
        while tail < len(text) and (text[tail] in NAME_CHARS or text[tail] == "."):
            tail += 1
        literal = text[start:tail]
        if not valid or tail != end:
            raise self._error(f"invalid number {literal!r}", start, tail,
                              hint="write numbers as 12, -3, 0.5 or 1e-5")
        if end == integer_end:
            try:
                return _Token("int", start, end, int(literal))
            except ValueError:  # past Python's limit on digits in int()
                raise self._error(f"the integer {literal[:12]}... has too many digits",
                                  start, end) from None
        number = float(literal)
        if math.isinf(number):
            raise self._error(f"the number {literal} is too large for a float", start, end)
        return _Token("float", start, end, number)

    def _string(self, start: int) -> _Token:
        text, quote = self.text, self.text[start]
        chars: list[str] = []
        pos = start + 1
        while pos < len(text):
            ch = text[pos]
            if ch == quote:
                return _Token("string", start, pos + 1, "".join(chars))
            if ch != "\\":
                chars.append(ch)
                pos += 1
                continue
            escape = text[pos + 1] if pos + 1 < len(text) else ""
            if escape in _UNESCAPE:
                chars.append(_UNESCAPE[escape])
                pos += 2
            elif escape in _HEX_ESCAPE_DIGITS:
                width = _HEX_ESCAPE_DIGITS[escape]
                written = text[pos + 2:pos + 2 + width]
                digits = "".join(itertools.takewhile(string.hexdigits.__contains__, written))
                if len(digits) != width or int(digits, 16) > 0x10FFFF:
                    raise self._error(f"invalid escape '\\{escape}{digits}' in string",
                                      pos, pos + 2 + len(digits),
                                      hint=f"'\\{escape}' takes {width} hex digits")
                chars.append(chr(int(digits, 16)))
                pos += 2 + width
            elif escape:
                raise self._error(f"unknown escape '\\{escape}' in string", pos, pos + 2,
                                  hint="write '\\\\' for a backslash")
            else:
                break
        raise self._error("unterminated string", start, len(text),
                          hint=f"close the string with {quote}")


# ----------------------------------------------------------------------------- parsing


def parse(text: str) -> Spec:
    """The `Spec` written in ``text``; raises `SpecError` with a caret for anything else."""
    if not isinstance(text, str):
        raise TypeError(f"parse() takes the spec text as a str, not {type(text).__name__}")
    return _Parser(text).parse()


class _Parser:
    """Recursive descent over `_Lexer` tokens, one method per rule of the grammar."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.lexer = _Lexer(text)
        self.depth = 0

    def parse(self) -> Spec:
        token = self.lexer.next()
        if token.tag == "end":
            raise SpecError("empty spec; expected a part name such as 'transformer_tiny'",
                            self.text, (token.start, token.end))
        if token.tag != "name":
            hint = "write the name without quotes" if token.tag == "string" else None
            raise self._unexpected(token, "a part name such as 'transformer_tiny'", hint)
        spec = self._call(token)
        extra = self.lexer.next()
        if extra.tag != "end":
            hint = ("there is a ')' too many" if extra.tag == ")"
                    else "a spec is a single call: name(key=value, ...)")
            raise SpecError("unexpected text after the spec", self.text,
                            (extra.start, len(self.text.rstrip())), hint)
        return spec

    def _call(self, name: _Token) -> Spec:
        if self.lexer.peek().tag != "(":
            return Spec(name.value, span=(name.start, name.end), bare=True, source=self.text)
        opening = self._open()
        args: list[tuple[str, Value]] = []
        arg_spans: list[tuple[str, ArgSpan]] = []
        while True:
            key = self.lexer.next()
            if key.tag == ")":
                break
            self._check_argument_name(key, opening, arg_spans)
            value, value_span = self._value()
            args.append((key.value, value))
            arg_spans.append((key.value, ArgSpan((key.start, key.end), value_span)))
            separator = self.lexer.next()
            if separator.tag == ")":
                key = separator
                break
            if separator.tag != ",":
                hint = "separate arguments with ','" if separator.tag == "name" else None
                raise self._unexpected(separator, "',' or ')'", hint, opening)
        self.depth -= 1
        return Spec(name.value, tuple(args), span=(name.start, key.end),
                    arg_spans=tuple(arg_spans), bare=False, source=self.text)

    def _check_argument_name(self, key: _Token, opening: _Token,
                             written: list[tuple[str, ArgSpan]]) -> None:
        """Raise unless ``key`` starts ``name =``; consumes the '='."""
        after = self.lexer.peek()
        positional = key.tag in ("int", "float", "string", "[", "{") or (
            key.tag == "name" and after.tag in (",", ")", "("))
        if positional:
            raise SpecError("positional arguments are not allowed; write name=value",
                            self.text, (key.start, key.end),
                            "every argument is a keyword argument, e.g. bra(region=64)")
        if key.tag != "name":
            raise self._unexpected(key, "an argument name or ')'", None, opening)
        if after.tag != "=":
            raise SpecError(f"expected '=' after argument name {key.value!r}", self.text,
                            (after.start, after.end), f"write {key.value}=value")
        for seen, spans in written:
            if seen == key.value:
                first = spans.name[0] + 1
                raise SpecError(f"duplicate argument {key.value!r}", self.text,
                                (key.start, key.end),
                                f"{key.value!r} is already given at column {first}; keep one")
        self.lexer.next()

    def _value(self) -> tuple[Value, Span]:
        token = self.lexer.next()
        span = (token.start, token.end)
        if token.tag in ("int", "float", "string"):
            return token.value, span
        if token.tag == "name":
            if token.value in KEYWORDS and self.lexer.peek().tag != "(":
                return KEYWORDS[token.value], span
            spec = self._call(token)
            return spec, spec.span
        if token.tag == "[":
            return self._sequence(token, "]")
        if token.tag == "{":
            return self._sequence(token, "}")
        raise self._unexpected(token, A_VALUE)

    def _sequence(self, opening: _Token, closer: str) -> tuple[Value, Span]:
        """A list ``[a, b]`` or a choice ``{a, b}``; '[' or '{' is already consumed."""
        self._enter(opening)
        items: list[Value] = []
        spans: list[Span] = []
        while True:
            if self.lexer.peek().tag == closer:
                end = self.lexer.next().end
                break
            value, value_span = self._value()
            items.append(value)
            spans.append(value_span)
            separator = self.lexer.next()
            if separator.tag == closer:
                end = separator.end
                break
            if separator.tag != ",":
                raise self._unexpected(separator, f"',' or '{closer}'", None, opening)
        self.depth -= 1
        span = (opening.start, end)
        if closer == "]":
            return PerLayer(items, span=span, item_spans=tuple(spans)), span
        if len(items) < 2:
            raise SpecError("a choice needs at least two options", self.text, span,
                            "write alternatives as {a, b}, or the single value without braces")
        return Choice(items, span=span, item_spans=tuple(spans)), span

    def _open(self) -> _Token:
        opening = self.lexer.next()
        self._enter(opening)
        return opening

    def _enter(self, opening: _Token) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise SpecError(f"the spec nests deeper than {MAX_DEPTH} levels", self.text,
                            (opening.start, opening.end), "flatten the spec")

    def _unexpected(self, token: _Token, expected: str, hint: str | None = None,
                    opening: _Token | None = None) -> SpecError:
        if token.tag == "end":
            found = "end of spec"
            if opening is not None and hint is None:
                hint = f"the '{opening.tag}' at column {opening.start + 1} is not closed"
        else:
            written = self.text[token.start:token.end]
            if len(written) > 30:
                written = written[:27] + "..."
            found = f"string {written}" if token.tag == "string" else f"'{written}'"
        return SpecError(f"unexpected {found}; expected {expected}", self.text,
                         (token.start, token.end), hint)
