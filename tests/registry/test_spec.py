"""The spec language: parsing, canonical printing, expanding choices and error carets."""

import itertools
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plugformer.registry.errors import SpecError
from plugformer.registry.spec import (
    MAX_DEPTH, Choice, PerLayer, Spec, expand, format_spec, parse,
)

S = Spec  # short for the expected trees below


def caret(err: SpecError) -> tuple[int, int]:
    """(column, width) of the caret line in the rendered error, relative to the text line."""
    lines = str(err).splitlines()
    line = next(line for line in lines if line.strip() and set(line.strip()) == {"^"})
    return line.index("^") - 2, line.count("^")


# ----------------------------------------------------------------------------- DESIGN.md examples


def test_bare_model_name():
    spec = parse("transformer_tiny")
    assert spec == S("transformer_tiny")
    assert spec.args == () and spec.bare
    assert str(spec) == "transformer_tiny"


def test_encdec_example():
    text = ("encdec(d_model=512, heads=8, layers=6, vocab=32000, pe=sinusoidal, attn=fused, "
            "ffn=relu(d_ff=2048), block=post_ln)")
    expected = S("encdec", (
        ("d_model", 512), ("heads", 8), ("layers", 6), ("vocab", 32000),
        ("pe", S("sinusoidal")), ("attn", S("fused")), ("ffn", S("relu", (("d_ff", 2048),))),
        ("block", S("post_ln")),
    ))
    spec = parse(text)
    assert spec == expected
    assert str(spec) == text
    assert [key for key, _ in spec.args] == ["d_model", "heads", "layers", "vocab", "pe", "attn",
                                             "ffn", "block"]


def test_nested_calls_example():
    text = ("transformer_base(attn=bra(region=64, topk=4), "
            "self_attn=bra(region=64, topk=4, routing=token))")
    spec = parse(text)
    assert spec.get("attn") == S("bra", {"region": 64, "topk": 4})
    assert spec.get("self_attn") == S("bra", {"region": 64, "topk": 4, "routing": S("token")})
    assert spec.get("self_attn").get("routing").bare
    assert str(spec) == text


def test_per_layer_example():
    spec = parse("transformer_tiny(attn=[dense, bra(topk=2)])")
    attn = spec.get("attn")
    assert attn == PerLayer([S("dense"), S("bra", {"topk": 2})])
    assert [attn.for_layer(i) for i in range(4)] == [S("dense"), S("bra", {"topk": 2})] * 2


def test_choice_example_expands_to_six_in_product_order():
    text = "transformer_tiny(attn={dense, fused, bra}, pe={sinusoidal, learned})"
    variants = expand(text)
    expected = [
        S("transformer_tiny", {"attn": S(attn), "pe": S(pe)})
        for attn, pe in itertools.product(["dense", "fused", "bra"], ["sinusoidal", "learned"])
    ]
    assert variants == expected
    assert str(variants[1]) == "transformer_tiny(attn=dense, pe=learned)"


# ----------------------------------------------------------------------------- values


@pytest.mark.parametrize("literal, value", [
    ("0", 0), ("-2", -2), ("007", 7), ("32000", 32000), ("1.0", 1.0), ("-0.5", -0.5),
    (".5", 0.5), ("-.5", -0.5), ("1.", 1.0), ("1e-5", 1e-5), ("3.0e-4", 3.0e-4), ("1E3", 1000.0),
    ("2e+16", 2e16), ("-0.0", -0.0), ("true", True), ("false", False), ("none", None),
    ("'x'", "x"), ('"x"', "x"), ("''", ""), ('"it\'s"', "it's"), (r"'a\'b'", "a'b"),
    (r"'a\\b'", "a\\b"), (r"'\n\t\r'", "\n\t\r"), (r"'\x41\u00e9\U0001F600'", "A\u00e9\U0001F600"),
    ("'sp ace, (=)'", "sp ace, (=)"),
])
def test_scalar_values(literal, value):
    parsed = parse(f"a(x={literal})").get("x")
    assert parsed == value and type(parsed) is type(value)


@pytest.mark.parametrize("value, text", [
    (1.0, "1.0"), (1e-5, "1e-05"), (-2, "-2"), (True, "true"), (None, "none"), ("x", "'x'"),
    ("it's", '"it\'s"'), ("'\"", "'\\'\"'"), ("a\\b", r"'a\\b'"),
    ("\n\x00\u2028", r"'\n\x00\u2028'"),
    (PerLayer([1, 2.5]), "[1, 2.5]"), (PerLayer([]), "[]"), (Choice(["a", S("b")]), "{'a', b}"),
])
def test_canonical_printing(value, text):
    assert format_spec(value) == text
    assert parse(f"a(x={text})").get("x") == value


def test_whitespace_and_trailing_commas_are_free():
    text = " a (\n\tx = [ 1 , 2 , ] ,\r\n y\u00a0=\u3000{ b ( ) , c } , ) "
    assert parse(text) == S("a", {"x": PerLayer([1, 2]), "y": Choice([S("b"), S("c")])})
    assert str(parse(text)) == "a(x=[1, 2], y={b, c})"


def test_bare_name_and_empty_call_are_equal_and_print_bare():
    bare, called = parse("a(x=relu)").get("x"), parse("a(x=relu())").get("x")
    assert bare == called and hash(bare) == hash(called)
    assert bare.bare and not called.bare
    assert str(parse("relu()")) == "relu" and str(parse("a(x=relu())")) == "a(x=relu)"


def test_keywords_are_values_unless_called_or_top_level():
    spec = parse("a(x=none, y=none(), z=true(k=1))")
    assert spec.get("x") is None
    assert spec.get("y") == S("none") and spec.get("z") == S("true", {"k": 1})
    assert parse("none") == S("none")
    assert str(spec) == "a(x=none, y=none(), z=true(k=1))"


def test_equality_tells_int_float_and_bool_apart():
    one, one_float, true = parse("a(x=1)"), parse("a(x=1.0)"), parse("a(x=true)")
    assert one != one_float and one != true and one_float != true
    assert len({one, one_float, true, parse("a( x = 1 )")}) == 3


# ----------------------------------------------------------------------------- spans and helpers


def test_spans_point_into_the_text():
    text = "m(attn=bra(region=64, topk=4), pe=[a, 'b'], k={1, c})"
    spec = parse(text)
    assert spec.source is text and spec.span == (0, len(text))
    attn = spec.arg_span("attn")
    assert text[slice(*attn.name)] == "attn"
    assert text[slice(*attn.value)] == "bra(region=64, topk=4)"
    bra = spec.get("attn")
    assert text[slice(*bra.span)] == "bra(region=64, topk=4)"
    assert text[slice(*bra.arg_span("topk").value)] == "4"
    per_layer = spec.get("pe")
    assert [text[slice(*span)] for span in per_layer.item_spans] == ["a", "'b'"]
    choice = spec.get("k")
    assert text[slice(*choice.span)] == "{1, c}"
    assert [text[slice(*span)] for span in choice.item_spans] == ["1", "c"]


def test_helpers():
    spec = parse("bra(region=64, topk=4)")
    assert spec.kwargs == {"region": 64, "topk": 4}
    assert spec.get("topk") == 4 and spec.get("lce") is None and spec.get("lce", 0) == 0
    changed = spec.with_args(topk=2, lce=3)
    assert str(changed) == "bra(region=64, topk=2, lce=3)"
    assert changed.arg_span("topk") == spec.arg_span("topk") and changed.arg_span("lce") is None
    assert str(changed.without("region", "missing")) == "bra(topk=2, lce=3)"
    assert str(S("x").with_args(a=1)) == "x(a=1)" and not S("x").with_args(a=1).bare
    assert str(spec.without("region", "topk")) == "bra"


def test_spec_error_points_at_an_argument():
    text = "encdec(d_model=63, heads=8)"
    spec = parse(text)
    err = spec.error("d_model=63 is not divisible by heads=8", "d_model", hint="try d_model=64")
    assert err.text is text and caret(err) == (text.index("63"), 2)
    err = spec.error("unknown argument 'heads'", "heads", at="name")
    assert caret(err) == (text.index("heads"), 5)
    assert caret(spec.error("bad model")) == (0, len(text))


@pytest.mark.parametrize("make, error", [
    (lambda: S("1x"), SpecError), (lambda: S("a", {"b c": 1}), SpecError),
    (lambda: S("a", [("k", 1), ("k", 2)]), SpecError),
    (lambda: S("a", {"x": float("nan")}), SpecError),
    (lambda: S("a", {"x": float("-inf")}), SpecError), (lambda: S("a", {"x": [1, 2]}), TypeError),
    (lambda: Choice([1]), SpecError), (lambda: S("a", {"x": 1}, bare=True), ValueError),
])
def test_invalid_trees_cannot_be_built(make, error):
    with pytest.raises(error):
        make()


def test_empty_per_layer_list_has_no_layer_value():
    with pytest.raises(SpecError, match="empty per-layer list"):
        PerLayer([]).for_layer(0)


# ----------------------------------------------------------------------------- expand


def test_expand_without_choices_returns_the_spec():
    spec = parse("a(x=[1, 2], y=b(z=3))")
    assert expand(spec) == [spec] and expand("a") == [S("a")]


def test_expand_reaches_nested_calls_lists_and_choices_of_choices():
    variants = expand("m(attn=[dense, bra(topk={1, 2})], pe={none, {learned, rope(base=10)}})")
    assert [str(v) for v in variants] == [
        f"m(attn=[dense, bra(topk={k})], pe={pe})"
        for k, pe in itertools.product([1, 2], ["none", "learned", "rope(base=10)"])
    ]
    assert all("{" not in str(v) for v in variants)


def test_expanded_spans_point_at_the_chosen_option():
    text = "m(attn={dense, bra(topk=0)}, k={1, 2})"
    last = expand(text)[-1]
    assert text[slice(*last.arg_span("attn").value)] == "bra(topk=0)"
    assert text[slice(*last.arg_span("k").value)] == "2"
    assert caret(last.get("attn").error("topk must be >= 1", "topk")) == (text.index("0)"), 1)


def test_expand_refuses_too_many_variants_before_building_them():
    text = "m(" + ", ".join(f"a{i}={{1, 2}}" for i in range(40)) + ")"
    with pytest.raises(SpecError, match=r"expands to 1099511627776 variants"):
        expand(text)


# ----------------------------------------------------------------------------- errors


ERRORS = [
    ("bra(region 64)", "expected '=' after argument name 'region'", "64"),
    ("bra(region=)", "unexpected ')'; expected a value (number, true/false/none, 'string', name, "
                     "[list] or {choice})", ")"),
    ("bra(region=64", "unexpected end of spec; expected ',' or ')'", None),
    ("a(x='abc", "unterminated string", "'abc"),
    ("a(topk=1, topk=2)", "duplicate argument 'topk'", "topk"),
    ("a(x={})", "a choice needs at least two options", "{}"),
    ("a(x={dense})", "a choice needs at least two options", "{dense}"),
    ("bra(64)", "positional arguments are not allowed; write name=value", "64"),
    ("bra(token)", "positional arguments are not allowed; write name=value", "token"),
    ("encdec(relu(d_ff=1))", "positional arguments are not allowed; write name=value", "relu"),
    ("a(x=1))", "unexpected text after the spec", ")"),
    ("a(x=1) b(y=2)", "unexpected text after the spec", "b(y=2)"),
    ("", "empty spec; expected a part name such as 'transformer_tiny'", None),
    ("'abc'", "unexpected string 'abc'; expected a part name such as 'transformer_tiny'", "'abc'"),
    ("a(x=@)", "unexpected character '@'", "@"),
    ("a(x=12abc)", "invalid number '12abc'", "12abc"),
    ("a(x=1.2.3)", "invalid number '1.2.3'", "1.2.3"),
    ("a(x=-)", "expected a number after '-'", "-"),
    ("a(x=1e999)", "the number 1e999 is too large for a float", "1e999"),
    (r"a(x='\q')", "unknown escape '\\q' in string", "\\q"),
    (r"a(x='\u12')", "invalid escape '\\u12' in string", "\\u12"),
    ("a(x=1 y=2)", "unexpected 'y'; expected ',' or ')'", "y"),
    ("a(,)", "unexpected ','; expected an argument name or ')'", ","),
    ("a(x=[1 2])", "unexpected '2'; expected ',' or ']'", "2"),
    ("a(x={1, 2)", "unexpected ')'; expected ',' or '}'", ")"),
    ("a(x=[1, 2", "unexpected end of spec; expected ',' or ']'", None),
]


@pytest.mark.parametrize("text, message, offending", ERRORS, ids=[e[1][:40] for e in ERRORS])
def test_syntax_errors_say_what_and_where(text, message, offending):
    with pytest.raises(SpecError) as info:
        parse(text)
    err = info.value
    assert err.message == message and str(err).startswith(message + "\n")
    assert err.text == text
    column = len(text) if offending is None else text.rindex(offending)
    width = 1 if offending is None else len(offending)
    assert err.position == column
    assert caret(err) == (column, width)


@pytest.mark.parametrize("text, hint", [
    ("bra(region 64)", "write region=value"),
    ("a(topk=1, topk=2)", "'topk' is already given at column 3; keep one"),
    ("a(x=1", "the '(' at column 2 is not closed"),
    ("a(x=1 y=2)", "separate arguments with ','"),
    ("a(x=1))", "there is a ')' too many"),
])
def test_errors_say_what_would_be_right(text, hint):
    with pytest.raises(SpecError) as info:
        parse(text)
    assert info.value.hint == hint and str(info.value).endswith("\n" + hint)


def test_error_rendering():
    err = SpecError("unknown attention 'bar'", "m(attn=bar)", (7, 10), "did you mean 'bra'?")
    assert str(err) == "unknown attention 'bar'\n  m(attn=bar)\n         ^^^\ndid you mean 'bra'?"
    assert (err.message, err.position, err.span) == ("unknown attention 'bar'", 7, (7, 10))
    assert err.hint == "did you mean 'bra'?"
    assert isinstance(err, ValueError)
    assert str(SpecError("no text")) == "no text" and SpecError("no text").position is None
    assert str(SpecError("end", "ab", (2, 2))) == "end\n  ab\n    ^"
    assert str(SpecError("past", "ab", (9, 12))) == "past\n  ab\n    ^"
    copy = pickle.loads(pickle.dumps(err))
    assert str(copy) == str(err) and copy.span == err.span


def test_error_rendering_of_multiline_and_wide_text():
    text = "a(x=1,\n  y=@)"
    with pytest.raises(SpecError) as info:
        parse(text)
    assert str(info.value).splitlines()[1:3] == ["    y=@)", "      ^"]
    with pytest.raises(SpecError) as info:
        parse("a(x='\u4e2d', y=@)")
    assert caret(info.value) == (len("a(x='\u4e2d', y=") + 1, 1)


def test_nesting_is_limited_without_recursion_error():
    inner = MAX_DEPTH - 1
    assert parse("a(x=" + "[" * inner + "]" * inner + ")")
    deep_calls = "a(x=" * MAX_DEPTH + "1" + ")" * MAX_DEPTH
    assert str(parse(deep_calls)) == deep_calls
    for text in ["a(x=" + "[" * MAX_DEPTH + "]" * MAX_DEPTH + ")", "a(x=" * (MAX_DEPTH + 1),
                 "a(x=" + "{" * 100_000]:
        with pytest.raises(SpecError, match=f"deeper than {MAX_DEPTH} levels"):
            parse(text)


def test_parse_needs_a_string():
    with pytest.raises(TypeError, match="not bytes"):
        parse(b"a")


# ----------------------------------------------------------------------------- properties


names = st.one_of(
    st.sampled_from(["none", "true", "false", "_", "bra", "d_model", "x1"]),
    st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True),
)
floats = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0.0, -0.0, 1e-5, 3.0e-4, 5e-324, 1.7976931348623157e308, -1e-300, 1e16, 0.1]),
)
strings = st.one_of(st.text(max_size=12), st.text(alphabet="'\"\\ \n\tx{}(),=", max_size=10))
scalars = st.one_of(
    st.integers(), floats, st.booleans(), st.none(), strings, st.builds(Spec, names),
)


def args_of(values):
    return st.lists(st.tuples(names, values), max_size=4, unique_by=lambda kv: kv[0])


def nodes(children):
    return st.one_of(
        st.builds(Spec, names, args_of(children)),
        st.builds(PerLayer, st.lists(children, max_size=4)),
        st.builds(Choice, st.lists(children, min_size=2, max_size=4)),
    )


specs = st.builds(Spec, names, args_of(st.recursive(scalars, nodes, max_leaves=20)))


# hypothesis warns that the repr of this recursive strategy is long; that is all it says
@pytest.mark.filterwarnings("ignore:Generating overly large repr")
@settings(max_examples=200, deadline=None)
@given(specs)
def test_canonical_text_round_trips(spec):
    text = str(spec)
    parsed = parse(text)
    assert parsed == spec and hash(parsed) == hash(spec)
    assert str(parsed) == text


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(), st.text(alphabet="ab_019.-+eE'\"\\ (),=[]{}\n", max_size=40)))
def test_arbitrary_text_parses_or_raises_spec_error(text):
    try:
        spec = parse(text)
    except SpecError as err:
        assert err.text == text and 0 <= err.position <= len(text)
        assert str(err).startswith(err.message)
    else:
        assert parse(str(spec)) == spec
