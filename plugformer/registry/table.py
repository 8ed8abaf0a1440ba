"""The part table: for every kind and name, the stack of definitions registered under it.

A name stands for the top of its stack. ``Registry.add`` with ``replace=True`` (or the quiet
redefinition of the same function) pushes a definition over the current one; removing a plugin,
because its hook failed half-way or because it is unregistered, takes out every definition that
plugin pushed, wherever it lies in a stack, and each name falls back to the newest definition
left (none left: the name is gone). So a plugin's load-and-removal leaves the table exactly as it
was, whatever was loaded in between::

    built-in dense; plugin A replaces dense; plugin B replaces it again -> B's dense
    unregister A                                                        -> B's dense
    unregister B                                                        -> the built-in dense

Definitions added outside any plugin hook (``plugin`` None) are never removed.
"""

from __future__ import annotations

from typing import Iterable, Iterator, Optional

from plugformer.registry.parts import Part

__all__ = ["PartTable"]


class PartTable:
    """Stacks of :class:`Part` by kind and name; what a name stands for is its stack's top.

    Args:
        kinds: the kinds of part the table holds.
    """

    def __init__(self, kinds: Iterable[str]) -> None:
        self._stacks: dict[str, dict[str, list[Part]]] = {kind: {} for kind in kinds}

    def has_kind(self, kind: object) -> bool:
        """Whether ``kind`` is one of the table's kinds."""
        return any(kind == known for known in self._stacks)

    def top(self, kind: str, name: object) -> Optional[Part]:
        """The part ``name`` stands for under ``kind``, or None (also for an unhashable name)."""
        try:
            stack = self._stacks[kind].get(name)  # type: ignore[call-overload]
        except TypeError:
            return None
        return stack[-1] if stack else None

    def names(self, kind: str) -> list[str]:
        """The sorted names registered under ``kind``."""
        return sorted(self._stacks[kind])

    def visible(self, kind: str) -> Iterator[Part]:
        """The part each name of ``kind`` stands for, sorted by name."""
        for name in self.names(kind):
            yield self._stacks[kind][name][-1]

    def push(self, part: Part) -> None:
        """Make ``part`` what its name stands for, keeping the definitions below it.

        An earlier definition from the same plugin (or from outside any plugin) is dropped: it
        leaves with the new one, so it could never be on top again.
        """
        stack = self._stacks[part.kind].setdefault(part.name, [])
        stack[:] = [kept for kept in stack if kept.plugin != part.plugin]
        stack.append(part)

    def remove_plugin(self, plugin: str) -> None:
        """Take out every definition ``plugin`` pushed; names left with none are removed."""
        for stacks in self._stacks.values():
            for name in list(stacks):
                stacks[name] = [part for part in stacks[name] if part.plugin != plugin]
                if not stacks[name]:
                    del stacks[name]

    def __len__(self) -> int:
        """How many names are registered, over every kind."""
        return sum(len(stacks) for stacks in self._stacks.values())
