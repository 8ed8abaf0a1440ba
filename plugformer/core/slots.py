"""Part slots: how a factory says "this argument is a part of kind X".

A model factory declares ``attn: Attention = "fused"``; the builder resolves the spec written there
and hands the factory a :class:`PartFactory`, a callable that builds that part for a given
:class:`BuildContext` (per layer, so a per-layer list ``[dense, bra]`` picks by ``ctx.layer``).
"""

from __future__ import annotations

from typing import Annotated, Any, Protocol, runtime_checkable

import attrs
from torch import nn

from plugformer.core.context import BuildContext


@attrs.frozen
class Slot:
    """Marks a factory argument as a part of ``kind`` (used inside ``typing.Annotated``)."""

    kind: str


@runtime_checkable
class PartFactory(Protocol):
    """Builds one part for a context; ``wired`` are the already-built parts a block receives."""

    kind: str
    name: str

    def __call__(self, ctx: BuildContext, *wired: Any) -> nn.Module: ...


class ArgumentError(ValueError):
    """A factory argument with an impossible value, so that errors can point at it.

    ``argument`` names it; a tuple names every argument involved (``("heads", "d_model")``) and
    the error points at the first one the user wrote.
    """

    def __init__(self, argument: str | tuple[str, ...], message: str) -> None:
        super().__init__(message)
        self.arguments = (argument,) if isinstance(argument, str) else tuple(argument)


Attention = Annotated[PartFactory, Slot("attention")]
Positional = Annotated[PartFactory, Slot("positional")]
FeedForwardPart = Annotated[PartFactory, Slot("feedforward")]
NormPart = Annotated[PartFactory, Slot("norm")]
BlockPart = Annotated[PartFactory, Slot("block")]
