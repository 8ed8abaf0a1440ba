"""Presets: a factory with other defaults. A preset is data, not a subclass (torchtune's
``llama3_8b()`` calling ``llama3()``)."""

from __future__ import annotations

import inspect
import typing
from typing import Any, Callable


def preset(base: Callable[..., Any], name: str, summary: str, **defaults: Any) -> Callable[..., Any]:
    """A factory that is ``base`` with new defaults; its spec arguments are ``base``'s.

    Defaults may be spec text for part slots (``ffn="relu(d_ff=2048)"``). ``describe`` shows the
    preset's defaults and ``str(model.spec)`` prints the preset's name.
    """
    signature = inspect.signature(base)
    unknown = set(defaults) - set(signature.parameters)
    if unknown:
        raise TypeError(f"preset {name!r}: {base.__name__} has no argument(s) {sorted(unknown)}")
    parameters = [
        p.replace(default=defaults[p.name]) if p.name in defaults else p
        for p in signature.parameters.values()
    ]

    def factory(*args: Any, **kwargs: Any) -> Any:
        return base(*args, **kwargs)

    factory.__signature__ = signature.replace(parameters=parameters)
    factory.__annotations__ = typing.get_type_hints(base, include_extras=True)
    factory.__name__ = factory.__qualname__ = name
    factory.__module__ = base.__module__
    args_doc = (base.__doc__ or "").partition("Args:")[2]
    factory.__doc__ = f"{summary}\n\nA preset of {base.__name__}.\n\nArgs:{args_doc}" if args_doc else summary
    factory.preset_of = base
    return factory
