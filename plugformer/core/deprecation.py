"""Names kept for one release after they moved: a module's ``__getattr__`` that warns."""

from __future__ import annotations

import importlib
import warnings
from typing import Any, Callable, Iterable


def moved_names(old: str, new: str, names: Iterable[str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for module ``old`` whose ``names`` moved to module ``new``:
    each access warns (``DeprecationWarning``, naming both places) and returns the new object;
    any other name raises ``AttributeError``."""
    moved = frozenset(names)

    def __getattr__(name: str) -> Any:
        if name not in moved:
            raise AttributeError(f"module {old!r} has no attribute {name!r}")
        warnings.warn(
            f"{old}.{name} moved to {new}.{name}; import it from there (the old place stops "
            "working in the next release)",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(importlib.import_module(new), name)

    return __getattr__
