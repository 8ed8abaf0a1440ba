"""How ``plugformer`` subcommands are declared and collected: the CLI's own through
:func:`command` and :func:`argument`, a plugin's through its
``plugformer_register_commands(commands)`` hook (:class:`Commands`)."""

from __future__ import annotations

import argparse
import sys
from typing import Any, Callable, Optional, Sequence

import attrs

from plugformer.registry.discovery import PluginError, strict_from_env
from plugformer.registry.registry import Registry

__all__ = ["COMMANDS", "Command", "Commands", "Handler", "argument", "command", "plugin_commands"]

Handler = Callable[[argparse.Namespace], int]


@attrs.frozen
class Command:
    """A subcommand: its name, one-line help, handler and argparse arguments."""

    name: str
    help: str
    handler: Handler
    arguments: tuple[tuple[tuple[str, ...], dict[str, Any]], ...]
    epilog: str = ""


#: Subcommands by name, in the order ``--help`` lists them.
COMMANDS: dict[str, Command] = {}


def _command(
    name: str, handler: Handler, help: Optional[str], arguments: Sequence[Any], epilog: str = ""
) -> Command:
    doc_lines = (handler.__doc__ or "").strip().splitlines()
    text = help or (doc_lines[0] if doc_lines else "")
    return Command(name=name, help=text, handler=handler, arguments=tuple(arguments), epilog=epilog)


def command(name: str, help: Optional[str] = None, epilog: str = "") -> Callable[[Handler], Handler]:
    """Decorator: make ``handler`` the subcommand ``name`` (help: its docstring's first line;
    ``epilog``: examples shown at the end of its ``--help``, as written)."""

    def decorate(handler: Handler) -> Handler:
        COMMANDS[name] = _command(name, handler, help, getattr(handler, "_cli_arguments", ()), epilog)
        return handler

    return decorate


def argument(*flags: str, **options: Any) -> Callable[[Handler], Handler]:
    """Decorator: one ``argparse`` argument of a subcommand, as ``add_argument`` takes it.
    Stack them under :func:`command`, in the order they should appear."""

    def decorate(handler: Handler) -> Handler:
        handler.__dict__.setdefault("_cli_arguments", []).insert(0, (flags, options))
        return handler

    return decorate


class Commands:
    """The subcommands of one run: the CLI's own, then those plugins add through their
    ``plugformer_register_commands(commands)`` hook by calling :meth:`add`."""

    def __init__(self, own: dict[str, Command]) -> None:
        self.by_name = dict(own)

    def add(
        self,
        name: str,
        handler: Handler,
        *,
        help: Optional[str] = None,
        arguments: Sequence[tuple[tuple[str, ...], dict[str, Any]]] = (),
        epilog: str = "",
    ) -> None:
        """Add the subcommand ``name``: ``handler(args) -> exit status``, its one-line ``help``
        (default: the handler's docstring's first line), ``(flags, options)`` pairs as
        ``ArgumentParser.add_argument`` takes them, and an ``epilog`` shown after the options
        in ``--help`` (examples).

        Raises:
            ValueError: ``name`` is taken by another command.
        """
        if name in self.by_name:
            taken = getattr(self.by_name[name].handler, "__module__", "plugformer.cli")
            raise ValueError(f"command {name!r} is taken (by {taken}); give the command another name")
        self.by_name[name] = _command(name, handler, help, arguments, epilog)


def plugin_commands(registry: Registry) -> dict[str, Command]:
    """The CLI's own commands and those the registry's plugins add, by name. A plugin whose hook
    fails is reported on stderr and skipped (raised with ``PLUGFORMER_STRICT=1``)."""
    commands = Commands(COMMANDS)
    for impl in registry.hook.plugformer_register_commands.get_hookimpls():  # in loading order
        before = dict(commands.by_name)
        try:
            impl.function(**{name: commands for name in impl.argnames})
        except Exception as exc:
            if strict_from_env():
                raise PluginError(f"plugin {impl.plugin_name!r} failed to add its commands: {exc}") from exc
            commands.by_name = before
            print(f"plugformer: plugin {impl.plugin_name!r} failed to add its commands: {exc}", file=sys.stderr)
    return commands.by_name
