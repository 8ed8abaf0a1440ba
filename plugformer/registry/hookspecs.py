"""The hooks a plugformer plugin may implement.

Hooks change only by gaining arguments: pluggy lets an implementation accept fewer arguments than
its specification, so plugins written against an older plugformer keep working.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from plugformer.hooks import hookspec

if TYPE_CHECKING:
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
