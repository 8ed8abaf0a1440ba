"""Parameter counts per part of a model, the table ``plugformer build`` prints."""

from __future__ import annotations

import re
from collections import OrderedDict

import attrs
from torch import nn

_LAYER_INDEX = re.compile(r"\.layers\.\d+\.")


@attrs.frozen
class PartCount:
    """Parameters of one part, summed over the layers that have it.

    Attributes:
        path: module path, with ``layers.*`` standing for every layer.
        part: class of the module.
        layers: how many layers the count covers (1 outside the stacks).
        parameters: total parameter count.
    """

    path: str
    part: str
    layers: int
    parameters: int


def parameter_table(model: nn.Module) -> list[PartCount]:
    """Parameters grouped by part (tied tensors counted once), in module order.

    A part is a direct child of a block (``self_attn``, ``ffn``, norms) or any other module
    holding parameters directly (embeddings, heads, final norms, positional tables).
    """
    modules = dict(model.named_modules())
    counts: OrderedDict[str, list] = OrderedDict()
    layers_seen: dict[str, set[str]] = {}
    for name, param in model.named_parameters():  # de-duplicates tied parameters
        owner = _part_of(name)
        key = _LAYER_INDEX.sub(".layers.*.", owner)
        entry = counts.setdefault(key, [_describe(modules[owner]), 0])
        entry[1] += param.numel()
        layers_seen.setdefault(key, set()).add(owner)
    return [
        PartCount(path=key or "(model)", part=part, layers=len(layers_seen[key]), parameters=total)
        for key, (part, total) in counts.items()
    ]


def _part_of(param_name: str) -> str:
    """The module path that stands for the part owning ``param_name``: inside a stack, the
    block's child (``...layers.3.ffn``); elsewhere the module holding the parameter."""
    pieces = param_name.split(".")[:-1]
    if "layers" in pieces:
        i = pieces.index("layers")
        return ".".join(pieces[: i + 3])
    return ".".join(pieces)


def _describe(module: nn.Module) -> str:
    kernel = getattr(module, "kernel", None)
    name = type(module).__name__
    return f"{name}({type(kernel).__name__})" if isinstance(kernel, nn.Module) else name
