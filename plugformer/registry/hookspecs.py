"""The hooks a plugformer plugin may implement.

Hooks change only by gaining arguments: pluggy lets an implementation accept fewer arguments than
its specification, so plugins written against an older plugformer keep working.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from plugformer.hooks import hookspec

if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any, Callable, Optional

    from torch import nn

    from plugformer.cli_commands import Commands
    from plugformer.registry.registry import Registry


@hookspec
def plugformer_register(registry: "Registry") -> None:
    """Add this plugin's parts to ``registry``.

    Call ``registry.add(kind, name, factory)`` once per part; one plugin may bring any number of
    parts of any kinds. Part factories take the :class:`~plugformer.core.context.BuildContext`
    as their first argument, named ``ctx``, and their spec arguments as typed keyword arguments
    with defaults; model and task factories take keyword arguments. The first line of a
    factory's docstring is the part's summary in ``plugformer list``.
    """


@hookspec
def plugformer_register_commands(commands: "Commands") -> None:
    """Add this plugin's subcommands to the ``plugformer`` command.

    Call ``commands.add(name, handler, help=None, arguments=())`` once per command: ``handler``
    takes the parsed ``argparse.Namespace`` (its ``registry`` attribute is the registry in use)
    and returns the exit status; ``help`` defaults to the first line of the handler's
    docstring; ``arguments`` are ``(flags, options)`` pairs as ``ArgumentParser.add_argument``
    takes them. Raise ``ValueError`` or ``LookupError`` for errors the user caused: the CLI
    prints them in one line and exits with status 2. The hook runs when the CLI starts, so keep
    the module that implements it cheap to import and import heavy modules in the handler.
    """


@hookspec
def plugformer_model_diagnostics(model: "nn.Module", run: "Callable[[nn.Module], Any]") -> "Optional[dict[str, float]]":
    """Scalars that describe how ``model`` works inside, for comparison tables and reports.

    ``run(model)`` runs the model once on a batch of the task being compared (the caller holds
    ``torch.no_grad()``). Return a dict of named scalars about the parts this plugin supplies
    (``{"route_recall": 0.93}`` for bi-level routing attention), or None when ``model`` has
    none of them. Keys must be unique across plugins: name them after what they measure in
    the field's terms. ``compare`` reports each as a column, mean and interval over seeds.
    """


@hookspec
def plugformer_model_figures(model: "nn.Module", run: "Callable[[nn.Module], Any]",
                             directory: "Path") -> "Optional[dict[str, Path]]":
    """Figures that show how ``model`` works inside (BRA's route maps), for reports.

    ``run(model)`` runs the model once on a batch of the task being compared (the caller holds
    ``torch.no_grad()``). Write each figure as a PNG file into ``directory`` (it exists) and
    return ``{title: path}``, or None when ``model`` has none of this plugin's parts.
    ``compare`` shows them on the variant's run card in ``report.html``.
    """
