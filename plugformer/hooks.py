"""The pluggy markers of plugformer.

A plugin is a module (or any object) with a function marked ``@hookimpl`` and named after a hook
of :mod:`plugformer.registry.hookspecs`::

    from plugformer import hookimpl

    @hookimpl
    def plugformer_register(registry):
        registry.add("attention", "mine", mine)
"""

from __future__ import annotations

import pluggy

PROJECT = "plugformer"

#: Marks a plugin's implementation of a plugformer hook.
hookimpl = pluggy.HookimplMarker(PROJECT)

#: Marks a hook specification (used only by :mod:`plugformer.registry.hookspecs`).
hookspec = pluggy.HookspecMarker(PROJECT)
