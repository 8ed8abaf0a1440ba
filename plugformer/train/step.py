"""One training step, shared by `compare` and `train`: schedule, loss, accumulation, precision.

Both commands run the same step: the learning rate of the step (`set_schedule`), the loss of
each micro-batch with the model's auxiliary loss (`loss_sums`), backward per micro-batch under
bf16 autocast when asked (`autocast`), gradient clipping and the AdamW update (`optimizer_step`).
`compile_blocks` is the ``--compile`` of both. Evaluation is :mod:`plugformer.train.evaluate`.

The loss of a step is the mean cross-entropy over the scored tokens of the whole (global)
batch, plus the auxiliary loss averaged over micro-batches: each micro-batch adds
``world * (its token-loss sum) / (scored tokens of the global batch) + aux / accum`` to the
gradient, so any split into ranks and micro-batches gives the gradient of one big batch.
"""

from __future__ import annotations

import math
from typing import Optional

import attrs
import torch
import torch.nn.functional as F
from torch import nn

from plugformer.tasks.base import IGNORE_INDEX, Batch
from plugformer.train.data import BatchPlan, scored_tokens, slice_rows
from plugformer.train.distributed import (Dist, all_reduce_sum, autocast, find_blocks,
                                          gradient_sync, unwrap)

__all__ = ["SCHEDULES", "PRECISIONS", "NonFinite", "StepResult", "schedule_at", "lr_at",
           "set_schedule", "loss_sums", "optimizer_step", "compile_blocks", "autocast"]

SCHEDULES = ("onecycle", "cosine", "constant")
PRECISIONS = ("fp32", "bf16")

#: One-cycle constants, those of ``torch.optim.lr_scheduler.OneCycleLR``'s defaults.
ONECYCLE_WARMUP = 0.3
ONECYCLE_DIV = 25.0
ONECYCLE_FINAL_DIV = 1e4
ONECYCLE_BETA1 = (0.85, 0.95)


class NonFinite(RuntimeError):
    """A non-finite loss or gradient norm; the caller says what to do about it.

    Attributes:
        what: ``"loss"`` or ``"gradient norm"``.
        value: the value found.
    """

    def __init__(self, what: str, value: float) -> None:
        super().__init__(f"non-finite {what} ({value})")
        self.what = what
        self.value = value


@attrs.frozen
class StepResult:
    """What one optimiser step did: its loss (mean token loss + aux) and gradient norm (before
    clipping)."""

    loss: float
    grad_norm: float


def _cosine_anneal(start: float, end: float, pct: float) -> float:
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)


def _onecycle(step: int, steps: int, lr: float) -> tuple[float, float]:
    """OneCycleLR's two cosine phases (Smith & Topin 2018), written out: LR from lr/25 up to
    ``lr`` over the first 30% of steps, then down to lr/25/1e4; beta1 the other way round."""
    low_beta, high_beta = ONECYCLE_BETA1
    initial = lr / ONECYCLE_DIV
    phases = ((float(ONECYCLE_WARMUP * steps) - 1, initial, lr, high_beta, low_beta),
              (steps - 1, lr, initial / ONECYCLE_FINAL_DIV, low_beta, high_beta))
    start_step = 0.0
    for index, (end_step, lr_from, lr_to, beta_from, beta_to) in enumerate(phases):
        if step <= end_step or index == len(phases) - 1:
            pct = (step - start_step) / (end_step - start_step)
            return _cosine_anneal(lr_from, lr_to, pct), _cosine_anneal(beta_from, beta_to, pct)
        start_step = end_step
    raise AssertionError("unreachable: the last phase always matches")


def schedule_at(step: int, steps: int, lr: float, schedule: str) -> tuple[float, Optional[float]]:
    """Learning rate and AdamW beta1 (None: leave it) of step ``step`` (0-based) of ``steps``.

    * ``onecycle``: ``torch.optim.lr_scheduler.OneCycleLR(max_lr=lr, total_steps=steps)`` with
      its defaults, written as a function of the step (cycles beta1 between 0.95 and 0.85). The
      default of ``compare``: short runs from scratch on synthetic tasks converge fastest with
      it, and every comparison published so far was measured with it.
    * ``cosine``: linear warm-up over the first 5% of steps, then cosine decay to zero. The
      default of ``train``: the usual schedule of longer language-model runs, and it ends at
      zero exactly at ``steps``, which a resumed run reaches too.
    * ``constant``: ``lr`` throughout.

    Raises:
        ValueError: an unknown ``schedule``.
    """
    if schedule == "onecycle":
        return _onecycle(step, steps, lr)
    if schedule == "cosine":
        warmup = max(1, steps // 20)
        return lr * (min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(step, steps) / steps))), None
    if schedule == "constant":
        return lr, None
    raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")


def lr_at(step: int, steps: int, lr: float, schedule: str) -> float:
    """The learning rate of `schedule_at`."""
    return schedule_at(step, steps, lr, schedule)[0]


def set_schedule(optimizer: torch.optim.Optimizer, step: int, steps: int, lr: float,
                 schedule: str) -> float:
    """Set every parameter group's LR (and beta1, for ``onecycle``) for step ``step``; returns the LR."""
    rate, beta1 = schedule_at(step, steps, lr, schedule)
    for group in optimizer.param_groups:
        group["lr"] = rate
        if beta1 is not None:
            group["betas"] = (beta1, *group["betas"][1:])
    return rate


def loss_sums(model: nn.Module, batch: Batch, precision: str = "fp32",
              device: Optional[torch.device] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy summed over the scored tokens of ``batch``, and the model's auxiliary loss
    (``model.aux_loss()``, e.g. MoE load balancing; zero when it has none), both fp32 scalars.

    The forward runs under bf16 autocast when ``precision == "bf16"``.
    """
    device = device if device is not None else batch.targets.device
    with autocast(device, precision):
        logits = batch.logits(model)
        token_loss = F.cross_entropy(logits.flatten(0, 1).float(), batch.targets.flatten(),
                                     ignore_index=IGNORE_INDEX, reduction="sum")
        aux_loss = getattr(unwrap(model), "aux_loss", None)
        extra = aux_loss() if callable(aux_loss) else None
    aux = torch.zeros((), device=token_loss.device) if extra is None else torch.as_tensor(extra).float()
    return token_loss, aux


def _as_float(value: torch.Tensor) -> float:
    full = getattr(value, "full_tensor", None)  # a DTensor under FSDP
    return float(full() if callable(full) else value)


def optimizer_step(model: nn.Module, optimizer: torch.optim.Optimizer, batch: Batch,
                   plan: BatchPlan, where: Dist = Dist(), *, precision: str = "fp32",
                   clip: float = 1.0) -> StepResult:
    """One optimiser step on the global ``batch``: this rank's micro-batches of ``plan``,
    backward each, clip the gradient norm to ``clip`` (0: no clipping), step, zero the grads.

    ``batch`` holds the whole global batch (every rank draws it); each micro-batch moves to
    ``where.device``. Collective when ``where`` has ranks.

    Raises:
        NonFinite: the loss or the gradient norm is not finite (the optimiser has not stepped).
    """
    scored = max(scored_tokens(batch), 1)
    sums = torch.zeros(2, device=where.device)  # (token-loss sum, aux-loss sum) of this rank
    for micro in range(plan.accum):
        part = slice_rows(batch, plan.rows(where.rank, micro)).to(where.device)
        with gradient_sync(model, micro == plan.accum - 1):
            token_loss, aux = loss_sums(model, part, precision, where.device)
            (token_loss * (where.world / scored) + aux / plan.accum).backward()
        sums += torch.stack([token_loss.detach(), aux.detach()])
    token_sum, aux_sum = all_reduce_sum(sums, where).tolist()
    loss = token_sum / scored + aux_sum / (plan.accum * where.world)
    if not math.isfinite(loss):
        raise NonFinite("loss", loss)
    norm = _as_float(nn.utils.clip_grad_norm_(model.parameters(), clip if clip > 0 else math.inf))
    if not math.isfinite(norm):
        raise NonFinite("gradient norm", norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return StepResult(loss=loss, grad_norm=norm)


def compile_blocks(model: nn.Module, *, backend: str = "inductor") -> int:
    """``torch.compile`` every outermost block of ``model`` in place (``Module.compile``: the
    state dict keeps its names); returns how many. A model without blocks is left alone.

    ``backend`` is ``torch.compile``'s; tests pass ``"eager"`` (graph capture without code
    generation: inductor on CPU takes minutes even for a tiny model)."""
    blocks = find_blocks(model)
    for block in blocks:
        block.compile(backend=backend)
    return len(blocks)
