"""The argument parser behind the ``plugformer`` command: help that shows examples and
defaults, a did-you-mean for a mistyped choice, and shell completion through ``argcomplete``.

Completion is optional (``pip install plugformer[completion]``), then in bash or zsh::

    eval "$(register-python-argcomplete plugformer)"
"""

from __future__ import annotations

import argparse
import os
import re
from typing import Any, Callable, Iterable, NoReturn, Sequence

from plugformer.registry.parts import KINDS, close_matches

#: ``(flags, add_argument keywords)``, the way commands declare their options.
ArgumentSpec = tuple[tuple[str, ...], dict[str, Any]]


def shows_default(action: argparse.Action) -> bool:
    """Whether ``--help`` should show the default of ``action``: it takes a value
    (not a flag like ``--verbose``) and has a default other than None."""
    return action.nargs != 0 and action.default is not None and action.default is not argparse.SUPPRESS


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Description and epilog (the examples) kept as written; each option's help ends with
    ``(default: X)`` unless its default is None, it is a flag, or its help already says."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if shows_default(action) and "default" not in text:
            text += " (default: %(default)s)"
        return text


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose "invalid choice" error suggests the closest choice."""

    def error(self, message: str) -> NoReturn:
        found = re.match(r"argument (.+?): invalid choice: '?([^' ]*)'? \(choose from (.*)\)$", message)
        if found:
            choices = re.findall(r"[\w.:-]+", found.group(3))
            close = close_matches(found.group(2), choices)
            if close:
                message += f"; did you mean {close[0]!r}?"
        super().error(message)


def add_arguments(parser: argparse.ArgumentParser, arguments: Iterable[ArgumentSpec]) -> None:
    """``parser.add_argument`` for each ``(flags, options)`` pair; an option with a default but
    no help text gets one that shows the default."""
    for flags, options in arguments:
        action = parser.add_argument(*flags, **options)
        if not action.help and shows_default(action):
            action.help = "(default: %(default)s)"


def part_names(registry: Any) -> list[str]:
    """Every registered part as ``kind:name`` and, where the name is unique, as ``name``."""
    parts = registry.list()
    counts: dict[str, int] = {}
    for part in parts:
        counts[part.name] = counts.get(part.name, 0) + 1
    return sorted({part.label for part in parts} | {name for name, n in counts.items() if n == 1})


#: The metavars whose values are part names or specs, and what completes them.
COMPLETED_METAVARS: dict[str, Callable[[Any], Sequence[str]]] = {
    "NAME": part_names,
    "SPEC": lambda registry: sorted({part.name for part in registry.list()}),
    "SPEC-OR-NAME": lambda registry: sorted({part.name for part in registry.list()}),
    "KIND": lambda registry: list(KINDS),
}


def set_completers(parser: argparse.ArgumentParser, registry: Any) -> None:
    """Give each argument of ``parser`` (and its subcommands) whose metavar is in
    ``COMPLETED_METAVARS`` an ``argcomplete`` completer listing the registry's names."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                set_completers(sub, registry)
        elif action.metavar in COMPLETED_METAVARS:
            names = COMPLETED_METAVARS[action.metavar]
            action.completer = lambda prefix, names=names, **_: [n for n in names(registry) if n.startswith(prefix)]


def autocomplete(parser: argparse.ArgumentParser, registry: Any) -> None:
    """Answer a shell's completion request (``argcomplete`` sets ``_ARGCOMPLETE``) and exit; do
    nothing on an ordinary run or when ``argcomplete`` is not installed."""
    if "_ARGCOMPLETE" not in os.environ:
        return
    try:
        import argcomplete
    except ImportError:
        return
    set_completers(parser, registry)
    argcomplete.autocomplete(parser)
