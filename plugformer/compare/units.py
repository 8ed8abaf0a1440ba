"""How comparison tables write quantities."""

from __future__ import annotations

from typing import Optional


def si_count(value: Optional[int]) -> str:
    """A count with an SI suffix (``1.2M``, ``520.5M``, ``3.1G``); ``-`` when unknown."""
    if value is None:
        return "-"
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:.1f}{suffix}"
    return str(value)
