"""Reading factories: docstring arguments, readable type names, did-you-mean, type hints."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Callable, Literal, Optional, Union

import pytest

from plugformer.registry.parts import (
    close_matches,
    doc_body,
    inspect_factory,
    parse_arg_docs,
    type_name,
)

if TYPE_CHECKING:
    from collections import OrderedDict  # noqa: F401  (only for the annotations below)

DOC = """Summary line.

Longer description
over two lines.

Args:
    region: tokens per region. Default: 64.
    topk (int): regions per query,
        own region included.
    k, v: keys and values.
    **extra: not a real argument.

Returns:
    region: not an argument (another section).
"""


def test_parse_arg_docs_reads_google_style_args_only():
    assert parse_arg_docs(DOC) == {
        "region": "tokens per region. Default: 64.",
        "topk": "regions per query, own region included.",
        "k": "keys and values.",
        "v": "keys and values.",
        "extra": "not a real argument.",
    }
    assert parse_arg_docs("No sections at all.") == {}


def test_doc_body_stops_at_the_first_section():
    assert doc_body(DOC) == "Longer description\nover two lines."


@pytest.mark.parametrize(
    "annotation, expected",
    [
        (int, "int"),
        (Optional[float], "float | None"),
        (int | None, "int | None"),
        (Union[int, str], "int | str"),
        (Literal["region", "token"], "'region' | 'token'"),
        (list[int], "list[int]"),
        (dict[str, list[float]], "dict[str, list[float]]"),
        (Annotated[int, "meta"], "int"),
        (Callable[[int], str], "Callable[[int], str]"),
        (Any, "any"),
    ],
)
def test_type_name(annotation, expected):
    assert type_name(annotation) == expected


def test_close_matches_prefers_the_same_name_in_another_case():
    assert close_matches("Dense", ["bra", "dense", "fused"])[0] == "dense"
    assert close_matches("brra", ["bra", "dense", "fused"]) == ["bra"]
    assert close_matches("zzz", ["bra", "dense"]) == []


def test_unresolvable_ctx_annotation_is_ignored_but_argument_annotation_is_an_error():
    def fine(ctx: OrderedDict, *, width: int = 4) -> OrderedDict:
        return None

    def broken(ctx, *, width: OrderedDict) -> None:
        return None

    info = inspect_factory("norm", fine)
    assert [(a.name, a.type) for a in info.args] == [("width", int)]
    with pytest.raises(ValueError, match="cannot resolve the type OrderedDict of argument 'width'"):
        inspect_factory("norm", broken)


def test_unannotated_argument_has_type_any():
    def plain(ctx, *, width=4):
        return None

    (width,) = inspect_factory("norm", plain).args
    assert (width.type, width.type_name, width.default) == (Any, "any", 4)
