"""Spec fuzzing generated from the registry's own argument schemas.

Every registered model's arguments, and every registered part's arguments at any depth, are
filled with values of the declared type (right) or of another type (wrong: a list, choice,
string, number or call where the slot takes something else, nested at any depth). What a value
of each type may be is written here, independently of the resolver's converter. The properties:
only `SpecError` ever comes out, every one with a caret inside the text; a spec whose values are
all right resolves; a spec with one wrong value is refused with the caret inside that value.
"""

from __future__ import annotations

import types
import typing
from typing import Any, Literal, Union

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plugformer.registry.builder import resolve, slot_kind
from plugformer.registry.errors import SpecError
from plugformer.registry.registry import default_registry
from plugformer.registry.spec import KEYWORDS, format_spec

REGISTRY = default_registry()
MODELS = sorted(part.name for part in REGISTRY.list("model"))
PART_KINDS = ("attention", "positional", "feedforward", "norm", "block")
# a real value that is no spec name, no number, no list: certainly not a part, int or bool
NOT_A_SPEC = "'@not a spec'"


class Text:
    """Spec text with the span of the one wrong value in it (None when all are right)."""

    def __init__(self, text: str, wrong: tuple[int, int] | None = None) -> None:
        self.text, self.wrong = text, wrong

    @staticmethod
    def join(pieces: list["Text | str"]) -> "Text":
        out, wrong = "", None
        for piece in pieces:
            if isinstance(piece, Text):
                if piece.wrong is not None:
                    wrong = (len(out) + piece.wrong[0], len(out) + piece.wrong[1])
                piece = piece.text
            out += piece
        return Text(out, wrong)


def _members(tp: Any) -> tuple[list[Any], bool]:
    """(non-None members of a union, whether None is one of them)."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        args = typing.get_args(tp)
        return [a for a in args if a is not type(None)], type(None) in args
    return [tp], False


def _literal_options(members: list[Any]) -> list[Any]:
    return [o for m in members if typing.get_origin(m) is Literal for o in typing.get_args(m)]


def right_scalar(draw, tp: Any) -> str:
    """A value of type ``tp`` (no part slot), as spec text."""
    members, optional = _members(tp)
    choices = []
    for member in members:
        if member is bool:
            choices.append(lambda: draw(st.sampled_from(["true", "false"])))
        elif member is int:
            choices.append(lambda: str(draw(st.one_of(st.integers(-2, 16), st.sampled_from([32, 64, 256])))))
        elif member is float:
            choices.append(lambda: format_spec(draw(st.one_of(
                st.integers(-5, 5), st.floats(-1e6, 1e6, allow_nan=False)))))
        elif member is str:
            choices.append(lambda: draw(st.sampled_from(["'abc'", "tanh", "'none'", "x_1"])))
        elif typing.get_origin(member) is Literal:
            opts = typing.get_args(member)
            choices.append(lambda opts=opts: format_spec(draw(st.sampled_from(opts))))
        elif member is Any:
            choices.append(lambda: draw(st.sampled_from(["1", "'s'", "none", "name"])))
    if optional:
        choices.append(lambda: "none")
    if not choices:
        pytest.skip(f"no generator for argument type {tp!r}")
    return draw(st.sampled_from(choices))()


def wrong_scalar(draw, tp: Any, *, per_layer_ok: bool) -> str:
    """A value that type ``tp`` (no part slot) does not take: another type, a choice, a nested
    list, an empty list, or a list where only one value is taken."""
    members, optional = _members(tp)
    if Any in members:
        return "{1, 2}"
    options = _literal_options(members)
    candidates = ["{1, 2}", "{a, b(x=1)}", "[[1]]" if per_layer_ok else "[1, 2]", "[]"]
    if bool not in members:
        candidates += ["true", "false"]
    if bool not in members and int not in members and float not in members:
        candidates += ["0", "-7", "2.5"]
    if float not in members and int in members:
        candidates += ["2.5", "1e-3"]
    if str not in members:
        candidates += ["'text'"] if not options else []
        candidates += [n for n in ["wrong_name", "dense"] if n not in options]
    if int not in members and float not in members and bool in members:
        candidates += ["1", "0.0"]
    candidates += ["call(x=1)", "dense(scale=1)"]
    if not optional:
        candidates += ["none"]
    return draw(st.sampled_from(candidates))


def right_part(draw, kind: str, depth: int, wrong_left: list[int]) -> Text:
    part = REGISTRY.get(kind, draw(st.sampled_from(sorted(p.name for p in REGISTRY.list(kind)))))
    given_args = [arg for arg in part.args if draw(st.booleans())]
    if not given_args and draw(st.booleans()):
        return Text(part.name if part.name not in KEYWORDS else part.name + "()")
    pieces: list[Text | str] = [part.name, "("]
    for i, arg in enumerate(given_args):
        pieces += [", " if i else "", arg.name, "=", value(draw, arg.type, depth + 1, wrong_left, per_layer_ok=True)]
    return Text.join(pieces + [")"])


def wrong_part(draw, kind: str) -> str:
    other = [k for k in PART_KINDS if k != kind]
    foreign = sorted(p.name for k in other for p in REGISTRY.list(k)
                     if (kind, p.name) not in REGISTRY and p.name not in KEYWORDS)
    candidates = ["3", "-1.5", "true", NOT_A_SPEC, "[]", "[[{p}]]", "[{p}, [{p}]]", "{{{p}, {p}}}",
                  "[{p}, {{{p}, {p}}}]", draw(st.sampled_from(foreign)), "no_such_part(x=1)"]
    if (kind, "none") not in REGISTRY:
        candidates.append("none")
    name = draw(st.sampled_from(sorted(p.name for p in REGISTRY.list(kind) if p.name not in KEYWORDS)))
    return draw(st.sampled_from(candidates)).format(p=name)


def value(draw, tp: Any, depth: int, wrong_left: list[int], *, per_layer_ok: bool) -> Text | str:
    """A value for an argument of type ``tp``; the ``wrong_left[0]``-th value drawn (counting
    from 0, depth first) is the one wrong value, none when it is negative."""
    kind, optional = slot_kind(tp)
    wrong_left[0] -= 1
    if wrong_left[0] == -1:
        if kind is not None:
            text = wrong_part(draw, kind)
            if text == "none" and optional:
                text = "3"
        else:
            text = wrong_scalar(draw, tp, per_layer_ok=per_layer_ok)
        return Text(text, (0, len(text)))
    if kind is not None:
        if optional and draw(st.integers(0, 4)) == 0:
            return "none"
        if depth < 3 and draw(st.integers(0, 3)) == 0:
            items = [right_part(draw, kind, depth, wrong_left) for _ in range(draw(st.integers(1, 3)))]
            return Text.join(["["] + [p for i, item in enumerate(items) for p in ([", "] if i else []) + [item]] + ["]"])
        return right_part(draw, kind, depth, wrong_left)
    if per_layer_ok and draw(st.integers(0, 5)) == 0:
        items = [right_scalar(draw, tp) for _ in range(draw(st.integers(1, 3)))]
        return "[" + ", ".join(items) + "]"
    return right_scalar(draw, tp)


@st.composite
def model_specs(draw, *, inject: bool) -> Text:
    model = REGISTRY.get("model", draw(st.sampled_from(MODELS)))
    wrong_left = [draw(st.integers(0, 24)) if inject else -1]
    pieces: list[Text | str] = [model.name, "("]
    args = [arg for arg in model.args if draw(st.integers(0, 2)) == 0 or slot_kind(arg.type)[0]]
    for i, arg in enumerate(args):
        pieces += [", " if i else "", arg.name, "=", value(draw, arg.type, 0, wrong_left, per_layer_ok=False)]
    spec = Text.join(pieces + [")"])
    if inject and spec.wrong is None:  # fewer values than the index drawn: draw again
        return draw(model_specs(inject=True))
    return spec


def _check_caret(err: SpecError, text: str) -> None:
    assert err.text == text, (err.text, text)
    assert err.span is not None and 0 <= err.span[0] <= err.span[1] <= len(text), err.span
    assert "^" in str(err).splitlines()[2]


FUZZ = settings(max_examples=1000, deadline=None, suppress_health_check=list(HealthCheck))


@FUZZ
@given(model_specs(inject=False))
def test_right_typed_specs_resolve(spec):
    """Every value of its declared type at every depth: the resolver takes the spec."""
    resolve(spec.text, check=False)


@FUZZ
@given(model_specs(inject=True))
def test_one_wrong_value_is_a_spec_error_under_that_value(spec):
    """One value of the wrong type anywhere: a SpecError whose caret lies inside that value."""
    with pytest.raises(SpecError) as info:
        resolve(spec.text, check=False)
    _check_caret(info.value, spec.text)
    start, end = info.value.span
    assert spec.wrong[0] <= start and end <= spec.wrong[1], (info.value.span, spec.wrong, str(info.value))


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.one_of(model_specs(inject=False), model_specs(inject=True)))
def test_checked_resolution_raises_only_spec_errors(spec):
    """Resolved and built on the meta device (sizes and ranges drawn freely): a spec is taken,
    or refused with a SpecError whose caret lies inside the text, never another error."""
    try:
        resolve(spec.text)
    except SpecError as err:
        _check_caret(err, spec.text)


@pytest.mark.parametrize("text, at, message", [
    ("transformer_tiny(attn=[[dense]])", "[dense]", "per-layer lists do not nest"),
    ("gpt_tiny(ffn=[[relu]])", "[relu]", "per-layer lists do not nest"),
    ("transformer_tiny(attn=[[dense, fused], bra])", "[dense, fused]", "per-layer lists do not nest"),
    ("transformer_tiny(attn=[dense, {fused, bra}])", "{fused, bra}", "holds a choice"),
    ("transformer_tiny(attn=bra(routing=[region, {token, auto}]))", "{token, auto}", "holds a choice"),
    ("transformer_tiny(ffn=relu(d_ff=[64, [128]]))", "[128]", "per-layer lists do not nest"),
    ("transformer_tiny(attn='dense(')", "'dense('", "in the string 'dense('"),
    ("transformer_tiny(attn='bra(topk=0)')", "'bra(topk=0)'", "topk must be"),
    ("transformer_tiny(attn=dense(scale=1" + "0" * 400 + "))", "1" + "0" * 400, "a float can hold"),
])
def test_issue_12_item_4_examples(text, at, message):
    with pytest.raises(SpecError) as info:
        resolve(text)
    assert message in info.value.message
    assert info.value.span == (text.index(at), text.index(at) + len(at))


def test_a_size_torch_cannot_hold_is_a_spec_error():
    text = "transformer_tiny(d_model=4" + "0" * 30 + ")"
    with pytest.raises(SpecError, match="cannot be built from these arguments: OverflowError"):
        resolve(text)
