"""`compare`: train and measure several model variants on one task, on equal terms.

Every variant is built from the same seed, sees the same batches in the same order (a batch is
a function of the seed and the step), trains with the same optimiser and schedule, and is timed
round-robin with the others, so that what differs between rows is the variants themselves.

The phases, in order:

1. Resolve the task and build every variant. Any variant that does not build, or that the task
   cannot serve, stops the comparison here, before anything trains (`CompareError`).
2. Measure each variant on one training batch: parameters, FLOPs, peak memory, then forward and
   forward+backward time, round-robin across variants.
3. Train each variant in turn (AdamW, one-cycle or cosine LR, gradient clipping: the step of
   :mod:`plugformer.train.step`, shared with ``train``), then score it on the held-out set at
   every eval length (:mod:`plugformer.train.evaluate`). A variant that fails at run time — an exception,
   running out of memory, a non-finite loss or gradient — stops with the reason in its row; the
   others go on.
"""

from __future__ import annotations

import functools
import time
from typing import Any, Callable, Iterable, Mapping, Optional, Union

import attrs
import torch
from torch import nn

import plugformer
from plugformer.compare import flops as flop_counting
from plugformer.compare import timing
from plugformer.compare.result import Comparison
from plugformer.compare.variants import CompareError, Variant, build_variants
from plugformer.registry.registry import Registry
from plugformer.registry.spec import Spec
from plugformer.tasks.base import Batch, Task
from plugformer.tasks.lookup import make_task
from plugformer.train.data import BatchPlan, slice_rows
from plugformer.train.distributed import Dist
from plugformer.train.evaluate import evaluate
from plugformer.train.step import (PRECISIONS, SCHEDULES, NonFinite, autocast, compile_blocks,
                                   loss_sums, optimizer_step, set_schedule)

__all__ = ["compare", "CompareError", "Progress", "make_task"]



@attrs.frozen
class Progress:
    """What a comparison is doing, handed to the ``progress`` callback of `compare`.

    Attributes:
        variant: index of the variant (0-based).
        variants: number of variants.
        label: the variant's label (how it differs from the others).
        stage: ``"measure"`` (costs), ``"train"``, ``"eval"``, ``"done"`` or ``"failed"``.
        step, steps: training steps done and planned.
        loss: the latest training loss, or None.
        message: the failure reason for ``"failed"``, otherwise None.
    """

    variant: int
    variants: int
    label: str
    stage: str
    step: int = 0
    steps: int = 0
    loss: Optional[float] = None
    message: Optional[str] = None


class _VariantFailed(Exception):
    """A run-time failure of one variant: recorded in its row, the others go on."""


def _fail(variant: Variant, reason: str) -> None:
    variant.row.status = "failed"
    variant.row.error = reason
    variant.model = None


def _reason(err: BaseException) -> str:
    if isinstance(err, _VariantFailed):
        return str(err)
    if isinstance(err, torch.OutOfMemoryError):
        return f"out of memory: {str(err).splitlines()[0]}"
    return f"{type(err).__name__}: {err}"


# ------------------------------------------------------------------------------------- steps


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


def _measure(variants: list[Variant], batch: Batch, device: torch.device, repeats: int,
             notify: Callable[..., None], *, precision: str, compile: bool) -> None:
    """FLOPs, peak memory and time of one batch for every variant still standing.

    FLOPs are counted on the eager model; with ``compile`` the blocks are compiled next, so
    memory and time are those of the compiled model that trains.
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
            if compile:
                compile_blocks(model)
            _forward_backward(model, batch, precision)  # warm up before measuring memory
            variant.row.mem_fwd_bytes = timing.peak_memory(
                lambda: _forward(model, batch, precision), device=device)
            variant.row.mem_fwd_bwd_bytes = timing.peak_memory(
                lambda: _forward_backward(model, batch, precision), device=device)
        except Exception as err:
            _fail(variant, f"while measuring: {_reason(err)}")
    standing = [v for v in variants if v.model is not None]
    for name, step in (("time_fwd_s", _forward), ("time_fwd_bwd_s", _forward_backward)):
        calls = [lambda m=v.model, f=step: f(m, batch, precision) for v in standing]
        for variant, seconds in zip(standing, timing.time_interleaved(calls, repeats=repeats, device=device)):
            setattr(variant.row, name, seconds)


def _train(variant: Variant, task: Task, *, steps: int, batch_size: int, lr: float, seed: int,
           device: torch.device, schedule: str, weight_decay: float, clip: float,
           precision: str, grad_accum: int, notify: Callable[..., None]) -> None:
    model = variant.model
    torch.manual_seed(seed)
    model.train()
    # foreach: one kernel per step for all parameters, not one per tensor; PyTorch picks it by
    # itself only on CUDA, and on CPU it takes a quarter off a tiny model's step.
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, foreach=True)
    plan = BatchPlan(batch_size, 1, grad_accum)
    where = Dist(device=device)
    for step in range(steps):
        set_schedule(optimizer, step, steps, lr, schedule)
        batch = task.batch(step, batch_size, seed=seed, kind=model.kind)
        try:
            done = optimizer_step(model, optimizer, batch, plan, where, precision=precision, clip=clip)
        except NonFinite as err:
            raise _VariantFailed(f"{err} at step {step}") from None
        variant.row.losses.append(done.loss)
        variant.row.steps_done = step + 1
        notify(variant, "train", step=step + 1, loss=done.loss)


def _train_and_evaluate(variant: Variant, task: Task, *, steps: int, device: torch.device,
                        precision: str, notify: Callable[..., None], **settings: Any) -> None:
    """Train ``variant`` and score it at every eval length, timing both; raises on failure."""
    start = time.perf_counter()
    try:
        _train(variant, task, steps=steps, device=device, precision=precision, notify=notify,
               **settings)
    finally:
        variant.row.train_s = time.perf_counter() - start
    notify(variant, "eval", step=steps)
    start = time.perf_counter()
    variant.row.evals = evaluate(variant.model, task, Dist(device=device), precision=precision)
    variant.row.eval_s = time.perf_counter() - start


# ------------------------------------------------------------------------------------- compare


def compare(
    specs: Union[str, Spec, Iterable[Union[str, Spec]]],
    task: Union[str, Spec, Task] = "copy",
    *,
    steps: int = 1000,
    batch: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
    device: Union[str, torch.device] = "cpu",
    eval_lengths: Optional[Iterable[int]] = None,
    task_args: Optional[Mapping[str, Any]] = None,
    progress: Optional[Callable[[Progress], None]] = None,
    timing_repeats: int = 5,
    schedule: str = "onecycle",
    weight_decay: float = 0.01,
    clip: float = 1.0,
    precision: str = "fp32",
    compile: bool = False,
    grad_accum: int = 1,
    registry: Optional[Registry] = None,
) -> Comparison:
    """Train and measure model variants on one synthetic task, on equal terms.

    Args:
        specs: the variants: a list of spec strings or `Spec`\\ s, or one spec whose ``{a, b}``
            choices expand to several (``"transformer_tiny(attn={dense, fused})"``).
        task: a registered task by name or spec (``"copy"``, ``"mqar(pairs=16)"``), or a `Task`.
        steps: training steps per variant.
        batch: examples per optimiser step (split into ``grad_accum`` micro-batches).
        lr: peak learning rate of AdamW.
        seed: seeds the model initialisation, the data and dropout; the same for every variant.
        device: where the models run.
        eval_lengths: further task lengths to evaluate after training (length generalisation).
        task_args: arguments of the task (``{"length": 8}``), over those of its spec.
        progress: called with a `Progress` as the comparison advances (for progress bars).
        timing_repeats: timed rounds; the median is reported.
        schedule: learning-rate schedule: ``onecycle`` (the default here), ``cosine`` (5% warm-up)
            or ``constant``; see `plugformer.train.step.schedule_at`.
        weight_decay: AdamW weight decay.
        clip: gradient-norm clipping threshold; 0 turns it off.
        precision: ``fp32``, or ``bf16`` (autocast in training, measurement and evaluation;
            weights and optimiser state stay fp32).
        compile: ``torch.compile`` every block of each variant (after its FLOPs are counted).
        grad_accum: micro-batches per optimiser step; ``batch`` must be a multiple of it. The
            update equals that of one batch of ``batch`` examples; time and memory are measured
            on one micro-batch.
        registry: where to look parts and tasks up. Default: the default registry.

    Returns:
        A `Comparison` with one row per variant, in order.

    Raises:
        ValueError: a bad number or choice (``steps``, ``lr``, ``schedule``, ``precision``, a
            ``batch`` that ``grad_accum`` does not divide).
        SpecError: the task is unknown (with did-you-mean) or its arguments are wrong.
        CompareError: a variant does not parse or build, or the task cannot serve it; raised
            before anything trains.
    """
    if steps < 1 or batch < 1:
        raise ValueError(f"steps and batch must be >= 1, got steps={steps}, batch={batch}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    plan = BatchPlan(batch, 1, grad_accum)
    started = time.perf_counter()
    device = torch.device(device)
    the_task = make_task(task, task_args=task_args, eval_lengths=eval_lengths, registry=registry)
    variants = build_variants(specs, the_task, seed=seed, device=device, registry=registry)
    count = len(variants)

    def notify(variant: Variant, stage: str, *, step: int = 0, loss: Optional[float] = None,
               message: Optional[str] = None) -> None:
        if progress is not None:
            progress(Progress(variant=variant.row.index, variants=count, label=variant.row.label,
                              stage=stage, step=step, steps=steps, loss=loss, message=message))

    kinds = {v.row.kind for v in variants}
    probes = {kind: slice_rows(the_task.batch(0, batch, seed=seed, kind=kind), plan.rows(0, 0)).to(device)
              for kind in kinds}
    for kind, probe in probes.items():
        _measure([v for v in variants if v.row.kind == kind], probe, device, timing_repeats, notify,
                 precision=precision, compile=compile)
    for variant in variants:
        if variant.model is None:
            notify(variant, "failed", message=variant.row.error)
            continue
        try:
            _train_and_evaluate(variant, the_task, steps=steps, batch_size=batch, lr=lr,
                                seed=seed, device=device, schedule=schedule,
                                weight_decay=weight_decay, clip=clip, precision=precision,
                                grad_accum=grad_accum, notify=notify)
        except Exception as err:
            _fail(variant, _reason(err))
            if device.type == "cuda":
                torch.cuda.empty_cache()
            notify(variant, "failed", step=variant.row.steps_done, message=variant.row.error)
            continue
        variant.model = None  # free it: the row holds everything measured
        notify(variant, "done", step=steps)

    settings = {
        "steps": steps, "batch": batch, "lr": lr, "seed": seed, "device": str(device),
        "schedule": schedule, "weight_decay": weight_decay, "clip": clip,
        "precision": precision, "compile": compile, "grad_accum": grad_accum,
        "timing_repeats": timing_repeats, "optimizer": "AdamW",
        "memory_method": timing.MEMORY_METHOD.get(device.type, "not measured"),
        "torch": torch.__version__, "plugformer": plugformer.__version__,
        "threads": torch.get_num_threads(), "wall_s": time.perf_counter() - started,
    }
    return Comparison(rows=[v.row for v in variants], task=the_task.describe(),
                      primary_metric=the_task.primary_metric, lengths=list(the_task.lengths),
                      settings=settings)
