"""Memory a model needs, the memory a device has, and building without random initialisation.

``build`` checks a model's parameter and buffer bytes (counted on the meta device, which
allocates nothing) against the device's memory before it allocates; ``load`` builds under
:func:`skip_random_init`, since every parameter is about to be overwritten by the file.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator, Optional

import torch
from torch import nn
from torch.overrides import TorchFunctionMode


class InsufficientMemoryError(MemoryError):
    """A model's parameters and buffers need more memory than its device has."""


def model_bytes(model: nn.Module) -> int:
    """Bytes of ``model``'s parameters and buffers, each shared tensor counted once (works on
    the meta device)."""
    seen: dict[int, int] = {}
    for tensor in [*model.parameters(), *model.buffers()]:
        seen[id(tensor)] = tensor.numel() * tensor.element_size()
    return sum(seen.values())


def available_bytes(device: torch.device | str | None) -> Optional[int]:
    """Memory a new model can use on ``device``: free memory for CUDA
    (``torch.cuda.mem_get_info``); for the CPU, psutil's available memory when psutil is
    installed, else the physical memory (``SC_PHYS_PAGES * SC_PAGE_SIZE``). None when unknown
    (meta and other devices)."""
    device = torch.device(device) if device is not None else torch.get_default_device()
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type != "cpu":
        return None
    try:
        import psutil
    except ImportError:
        try:
            return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    return int(psutil.virtual_memory().available)


def check_fits(model: nn.Module, device: torch.device | str | None, *, what: str = "the model") -> None:
    """Raise :class:`InsufficientMemoryError`, with both numbers, when ``model`` (built on the
    meta device) needs more bytes than ``device`` has available."""
    have = available_bytes(device)
    need = model_bytes(model)
    if have is not None and need > have:
        where = str(device if device is not None else torch.get_default_device())
        raise InsufficientMemoryError(
            f"{what} needs {_gib(need)} for its parameters and buffers ({need:,} bytes), but "
            f"{where} has {_gib(have)} available ({have:,} bytes); choose smaller sizes, a lower "
            "precision (dtype=) or another device"
        )


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.2f} MiB"


_RANDOM_METHODS = {
    getattr(torch.Tensor, name)
    for name in ("normal_", "uniform_", "random_", "bernoulli_", "exponential_", "cauchy_",
                 "log_normal_", "geometric_")
}
_RANDOM_INITS = {
    getattr(nn.init, name)
    for name in ("normal_", "uniform_", "trunc_normal_", "kaiming_uniform_", "kaiming_normal_",
                 "xavier_uniform_", "xavier_normal_", "orthogonal_", "sparse_")
}


class _SkipRandomInit(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _RANDOM_METHODS or func in _RANDOM_INITS:
            return args[0] if args else kwargs.get("tensor")
        return func(*args, **kwargs)


@contextlib.contextmanager
def skip_random_init() -> Iterator[None]:
    """Within the block, in-place random fills (``Tensor.normal_``, ``uniform_``, ...,
    ``nn.init.kaiming_uniform_`` and the other random ``nn.init`` functions) leave tensors as
    they are (uninitialised). Deterministic initialisation (``zeros_``, ``ones_``, tables
    computed from positions) still runs, so non-persistent buffers come out right. For building
    a model whose every parameter and persistent buffer is then loaded."""
    with _SkipRandomInit():
        yield
