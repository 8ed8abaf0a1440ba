"""The costs of each variant on one training batch: FLOPs, peak memory, forward and
forward+backward time (round-robin across variants, so that a busy machine slows them alike).

A variant that fails here is marked failed in its row, with the reason, and trains no run.
"""

from __future__ import annotations

import functools
from typing import Callable, Optional

import torch
from torch import nn

from plugformer.compare import flops as flop_counting
from plugformer.compare import timing
from plugformer.compare.variants import Variant
from plugformer.tasks.base import Batch
from plugformer.train.step import autocast, loss_sums

__all__ = ["measure", "fail"]


def fail(variant: Variant, reason: str) -> None:
    """Mark ``variant`` failed with ``reason`` and drop its model."""
    variant.row.status = "failed"
    variant.row.error = reason
    variant.model = None


def _reason(err: BaseException) -> str:
    if isinstance(err, torch.OutOfMemoryError):
        return f"out of memory: {str(err).splitlines()[0]}"
    return f"{type(err).__name__}: {err}"


def _logits(model: nn.Module, batch: Batch, precision: str) -> torch.Tensor:
    with autocast(batch.targets.device, precision):
        return batch.logits(model)


def _forward(model: nn.Module, batch: Batch, precision: str) -> None:
    model.eval()
    with torch.no_grad():
        _logits(model, batch, precision)


def _forward_backward(model: nn.Module, batch: Batch, precision: str) -> None:
    model.train()
    model.zero_grad(set_to_none=True)
    sum(loss_sums(model, batch, precision)).backward()
    model.zero_grad(set_to_none=True)


def measure(variants: list[Variant], batch: Batch, device: torch.device, repeats: int,
            notify: Callable[..., None], *, precision: str,
            compiler: Optional[Callable[[nn.Module], object]] = None) -> None:
    """FLOPs, peak memory and time of one batch for every variant still standing.

    FLOPs are counted on the eager model; with a ``compiler`` (e.g.
    `plugformer.train.step.compile_blocks`) the model is compiled next, so memory and time
    are those of the compiled model that trains.
    """
    for variant in variants:
        if variant.model is None:
            continue
        notify(variant, "measure")
        model = variant.model
        try:
            forward = functools.partial(_logits, batch=batch, precision=precision)
            variant.row.flops_fwd = flop_counting.count_flops(model, forward)
            variant.row.flops_fwd_bwd = flop_counting.count_flops(model, forward, backward=True)
            if compiler is not None:
                compiler(model)
            _forward_backward(model, batch, precision)  # warm up before measuring memory
            variant.row.mem_fwd_bytes = timing.peak_memory(
                lambda: _forward(model, batch, precision), device=device)
            variant.row.mem_fwd_bwd_bytes = timing.peak_memory(
                lambda: _forward_backward(model, batch, precision), device=device)
        except Exception as err:
            fail(variant, f"while measuring: {_reason(err)}")
    standing = [v for v in variants if v.model is not None]
    for name, step in (("time_fwd_s", _forward), ("time_fwd_bwd_s", _forward_backward)):
        calls = [lambda m=v.model, f=step: f(m, batch, precision) for v in standing]
        for variant, seconds in zip(standing, timing.time_interleaved(calls, repeats=repeats, device=device)):
            setattr(variant.row, name, seconds)


