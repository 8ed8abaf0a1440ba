"""Registry entries: what a registered part is and what its factory's signature says about it.

A factory declares everything the registry knows about its part: the keyword parameters are the
spec arguments (types from the annotations, defaults from the signature, docs from a Google-style
``Args:`` section), the first docstring line is the summary, and the ``supports_*`` / ``uses_*``
class attributes of the annotated return class are the capabilities.
"""

from __future__ import annotations

import difflib
import inspect
import re
import types
import typing
from typing import Any, Callable, Iterable, Literal, Mapping, Optional, Union

import attrs

#: Every kind of part, in the order they are listed.
KINDS = ("attention", "positional", "feedforward", "norm", "block", "model", "task")

#: Kinds whose factories receive the BuildContext as their first positional argument, ``ctx``.
CONTEXT_KINDS = frozenset({"attention", "positional", "feedforward", "norm", "block"})

NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

_CAPABILITY_PREFIXES = ("supports_", "uses_")
_ARGS_SECTION = re.compile(r"(Args|Arguments|Parameters|Keyword Args|Keyword Arguments):")
_ANY_SECTION = re.compile(
    r"(Args|Arguments|Parameters|Keyword Args|Keyword Arguments|Returns|Yields|Raises|"
    r"Attributes|Examples?|Notes?|References?|Shapes?|Warnings?):"
)
_ARG_ITEM = re.compile(
    r"(?P<names>\*{0,2}\w+(?:\s*,\s*\*{0,2}\w+)*)\s*(?:\([^)]*\))?\s*:\s*(?P<text>.*)"
)


class _Required:
    """The default of an argument that has none."""

    _instance: Optional["_Required"] = None

    def __new__(cls) -> "_Required":
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "REQUIRED"

    def __bool__(self) -> bool:
        return False


#: ``ArgInfo.default`` of an argument that must be given.
REQUIRED: Any = _Required()


@attrs.frozen
class ArgInfo:
    """One spec argument of a factory.

    Attributes:
        name: the keyword.
        type: the annotation, resolved (``typing.Any`` when the parameter has none).
        type_name: the annotation as people read it (``int``, ``'region' | 'token'``).
        default: the default value, or :data:`REQUIRED`.
        doc: its line in the factory's ``Args:`` section, or "".
    """

    name: str
    type: Any = attrs.field(eq=False, hash=False)
    type_name: str
    default: Any = attrs.field(hash=False)
    doc: str = ""

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


@attrs.frozen
class Part:
    """A registered part: a name bound to a factory, with what the factory declares.

    ``source`` is the plugin that registered the part (or the factory's module when no plugin
    hook was running); ``plugin`` is the registering plugin's name, or None.
    """

    kind: str
    name: str
    factory: Callable[..., Any]
    source: str
    summary: str
    capabilities: Mapping[str, bool] = attrs.field(factory=dict, hash=False)
    args: tuple[ArgInfo, ...] = ()
    plugin: Optional[str] = None

    @property
    def label(self) -> str:
        """``kind:name``, the unambiguous way to name a part."""
        return f"{self.kind}:{self.name}"


@attrs.frozen
class PartDescription:
    """Everything the registry knows about a part, for people (``str()``) and tools (fields)."""

    kind: str
    name: str
    summary: str
    doc: str
    args: tuple[ArgInfo, ...]
    capabilities: dict[str, bool] = attrs.field(hash=False)
    source: str

    def __str__(self) -> str:
        lines = [f"{self.kind}:{self.name}" + (f" - {self.summary}" if self.summary else "")]
        lines.append(f"  source: {self.source}")
        if self.args:
            heads = [_arg_head(arg) for arg in self.args]
            width = max(len(head) for head in heads)
            lines.append("  arguments:")
            for head, arg in zip(heads, self.args):
                lines.append(f"    {head:<{width}}  {arg.doc}".rstrip())
        else:
            lines.append("  arguments: none")
        if self.capabilities:
            lines.append("  capabilities:")
            for name, value in self.capabilities.items():
                lines.append(f"    {name}: {'yes' if value else 'no'}")
        body = doc_body(self.doc)
        if body:
            lines.append("")
            lines.extend(f"  {line}".rstrip() for line in body.splitlines())
        return "\n".join(lines)


@attrs.frozen
class FactoryInfo:
    """What :func:`inspect_factory` reads from a factory."""

    summary: str
    doc: str
    args: tuple[ArgInfo, ...]
    capabilities: dict[str, bool]


def inspect_factory(kind: str, factory: Callable[..., Any]) -> FactoryInfo:
    """Read a factory's spec arguments, summary and capabilities, refusing unusable signatures.

    Raises:
        TypeError: ``factory`` is not callable.
        ValueError: the signature cannot serve a spec (``**kwargs`` or ``*args``, no ``ctx`` for
            a part kind, positional-only spec arguments, unresolvable argument types).
    """
    label = factory_label(factory)
    if not callable(factory):
        raise TypeError(f"{kind} factory must be callable, got {factory!r}")
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"cannot read the signature of {kind} factory {label}: {exc}") from exc
    params = list(signature.parameters.values())
    for param in params:
        if param.kind is inspect.Parameter.VAR_KEYWORD:
            raise ValueError(
                f"{kind} factory {label} takes **{param.name}: list every argument as a keyword "
                "parameter instead, so that a misspelled spec argument is reported rather than "
                "silently swallowed"
            )
        if param.kind is inspect.Parameter.VAR_POSITIONAL:
            raise ValueError(
                f"{kind} factory {label} takes *{param.name}: spec arguments are keyword "
                "arguments, so list each one as a keyword parameter"
            )
    first = params[0] if params else None
    takes_ctx = (
        first is not None
        and first.name == "ctx"
        and first.kind is not inspect.Parameter.KEYWORD_ONLY
    )
    if kind in CONTEXT_KINDS and not takes_ctx:
        raise ValueError(
            f"{kind} factory {label} must take the BuildContext as its first positional "
            "parameter, named 'ctx': def factory(ctx, *, arg: type = default, ...)"
        )
    if takes_ctx:
        params = params[1:]
    # Positional-only parameters after ctx are wired by the builder (a block's built parts),
    # not written in a spec; every other parameter is a spec argument.
    params = [param for param in params if param.kind is not inspect.Parameter.POSITIONAL_ONLY]

    target = factory.__init__ if inspect.isclass(factory) else factory
    hints = _type_hints(target, label, {param.name for param in params})
    doc = factory_doc(factory)
    arg_docs = parse_arg_docs(doc)
    if inspect.isclass(factory):
        arg_docs = {**parse_arg_docs(factory_doc(factory.__init__)), **arg_docs}
    args = tuple(
        ArgInfo(
            name=param.name,
            type=hints.get(param.name, Any),
            type_name=type_name(hints.get(param.name, Any)),
            default=REQUIRED if param.default is inspect.Parameter.empty else param.default,
            doc=arg_docs.get(param.name, ""),
        )
        for param in params
    )
    returns = factory if inspect.isclass(factory) else hints.get("return")
    return FactoryInfo(
        summary=doc.splitlines()[0].strip() if doc else "",
        doc=doc,
        args=args,
        capabilities=capabilities_of(returns),
    )


def capabilities_of(cls: Any) -> dict[str, bool]:
    """The boolean ``supports_*`` / ``uses_*`` class attributes of ``cls`` (inherited included)."""
    if typing.get_origin(cls) is typing.Annotated:
        cls = typing.get_args(cls)[0]
    if not isinstance(cls, type):
        return {}
    found = {}
    for name in sorted(dir(cls)):
        if name.startswith(_CAPABILITY_PREFIXES):
            value = getattr(cls, name, None)
            if isinstance(value, bool):
                found[name] = value
    return found


def check_capabilities(capabilities: Mapping[str, bool]) -> dict[str, bool]:
    """Validate capabilities given by hand: names ``supports_*`` / ``uses_*``, values bool."""
    checked = {}
    for name, value in dict(capabilities).items():
        if not isinstance(name, str) or not name.startswith(_CAPABILITY_PREFIXES):
            raise ValueError(f"capability names start with 'supports_' or 'uses_', got {name!r}")
        if not isinstance(value, bool):
            raise ValueError(f"capability {name!r} must be True or False, got {value!r}")
        checked[name] = value
    return checked


def factory_label(factory: Any) -> str:
    """``module.qualname`` of a factory, for messages."""
    module = getattr(factory, "__module__", None)
    qualname = getattr(factory, "__qualname__", None) or getattr(factory, "__name__", None)
    if qualname is None:
        return repr(factory)
    return f"{module}.{qualname}" if module else qualname


def same_definition(a: Any, b: Any) -> bool:
    """Whether two factories are one definition seen twice (a module reloaded, a notebook cell
    run again): same module and qualified name, and not lambdas."""
    name_a = getattr(a, "__qualname__", None)
    return (
        name_a is not None
        and "<lambda>" not in name_a
        and name_a == getattr(b, "__qualname__", None)
        and getattr(a, "__module__", None) == getattr(b, "__module__", None)
    )


def factory_doc(factory: Any) -> str:
    """The factory's own docstring, cleaned (not inherited: a class's base docs are not its)."""
    doc = getattr(factory, "__doc__", None)
    return inspect.cleandoc(doc) if isinstance(doc, str) else ""


def parse_arg_docs(doc: str) -> dict[str, str]:
    """Per-argument text of a Google-style ``Args:`` section; ``a, b: text`` documents both."""
    found: dict[str, list[str]] = {}
    section_indent: Optional[int] = None
    item_indent: Optional[int] = None
    current: Optional[list[str]] = None
    for line in doc.splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        indent = len(line) - len(line.lstrip())
        if section_indent is not None and indent <= section_indent:
            section_indent = None
        if section_indent is None:
            if _ARGS_SECTION.fullmatch(stripped):
                section_indent, item_indent, current = indent, None, None
            continue
        if item_indent is None:
            item_indent = indent
        match = _ARG_ITEM.fullmatch(stripped)
        if indent == item_indent and match:
            current = [match["text"]]
            for arg_name in match["names"].split(","):
                found[arg_name.strip().lstrip("*")] = current
        elif current is not None:
            current.append(stripped)
    return {arg_name: " ".join(p for p in parts if p) for arg_name, parts in found.items()}


def doc_body(doc: str) -> str:
    """The docstring after its summary line, up to its first section (``Args:``, ...)."""
    body = []
    for line in doc.splitlines()[1:]:
        if _ANY_SECTION.fullmatch(line.strip()) and not line.startswith((" ", "\t")):
            break
        body.append(line)
    return "\n".join(body).strip()


def type_name(tp: Any) -> str:
    """An annotation as people read it: ``int``, ``int | None``, ``'region' | 'token'``."""
    if tp is Any:
        return "any"
    if tp is None or tp is type(None):
        return "None"
    if tp is Ellipsis:
        return "..."
    if isinstance(tp, str):
        return tp
    if isinstance(tp, (list, tuple)):
        return "[" + ", ".join(type_name(item) for item in tp) + "]"
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Annotated:
        return type_name(args[0])
    if origin is Literal:
        return " | ".join(repr(arg) for arg in args)
    if origin is Union or origin is types.UnionType:
        return " | ".join(type_name(arg) for arg in args)
    if origin is not None:
        base = getattr(origin, "__name__", None) or repr(origin).removeprefix("typing.")
        return f"{base}[{', '.join(type_name(arg) for arg in args)}]" if args else base
    if isinstance(tp, type):
        return tp.__name__
    return repr(tp).removeprefix("typing.")


def close_matches(word: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    """Candidates that look like ``word``: same name in another case first, then close ones."""
    candidates = list(candidates)
    by_lower: dict[str, str] = {}
    for candidate in candidates:
        by_lower.setdefault(candidate.lower(), candidate)
    matches = []
    if word.lower() in by_lower and by_lower[word.lower()] != word:
        matches.append(by_lower[word.lower()])
    matches += difflib.get_close_matches(word, candidates, n=n)
    matches += [by_lower[m] for m in difflib.get_close_matches(word.lower(), by_lower, n=n)]
    unique = list(dict.fromkeys(m for m in matches if m != word))
    return unique[:n]


def _arg_head(arg: ArgInfo) -> str:
    default = " (required)" if arg.required else f" = {arg.default!r}"
    return f"{arg.name}: {arg.type_name}{default}"


def _type_hints(target: Any, label: str, arg_names: set[str]) -> dict[str, Any]:
    """Resolved annotations of ``target``. Where some cannot be resolved (a name imported only
    under TYPE_CHECKING), resolve the others one by one; an unresolvable spec argument is an
    error, an unresolvable ``ctx`` or return annotation is ignored."""
    try:
        return typing.get_type_hints(target, include_extras=True)
    except Exception:  # noqa: BLE001 - any failure falls back to one annotation at a time
        pass
    raw = getattr(target, "__annotations__", None) or {}
    globalns = getattr(inspect.unwrap(target), "__globals__", {})
    hints = {}
    for key, annotation in raw.items():
        holder = types.SimpleNamespace(__annotations__={key: annotation})
        try:
            hints[key] = typing.get_type_hints(holder, globalns=globalns, include_extras=True)[key]
        except Exception as exc:  # noqa: BLE001
            if key in arg_names:
                shown = annotation if isinstance(annotation, str) else repr(annotation)
                raise ValueError(
                    f"cannot resolve the type {shown} of argument {key!r} of {label}: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
    return hints
