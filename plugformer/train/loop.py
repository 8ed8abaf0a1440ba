"""`train`: fit a spec'd model on a synthetic task, in one process or data-parallel.

The same call runs alone (started plainly) or as one rank of many (started under ``torchrun``);
see :mod:`plugformer.train.distributed`. Each step:

1. every rank draws the step's global batch and keeps its micro-batches
   (:mod:`plugformer.train.data`);
2. each micro-batch adds ``world * (sum of token losses) / (scored tokens of the global batch)``
   to the gradient; DDP and FSDP average over ranks, so the gradient is exactly that of the mean
   token loss over the global batch, as one process computes it;
3. gradients are clipped by their global norm, AdamW steps with the LR of this step, and the
   loss (summed over ranks) goes to the progress bar and ``metrics.jsonl``.

Steps 2 and 3 and the schedule are :mod:`plugformer.train.step`, which ``compare`` runs too.

Randomness (dropout, routing noise) is reseeded from ``(seed, step, rank)`` at every step, and
the learning rate is a function of the step, so a run resumed from a checkpoint continues as
if it had never stopped.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Optional, Union

import attrs
import torch
from torch import nn

from plugformer.registry.registry import Registry
from plugformer.registry.spec import Spec
from plugformer.tasks.base import Task
from plugformer.tasks.metrics import EvalResult, eval_line
from plugformer.train import checkpoint
from plugformer.train.data import BatchPlan, input_tokens
from plugformer.train.distributed import (FSDP_USEFUL_PARAMS, STRATEGIES, Dist, agree,
                                          find_blocks, setup, unwrap, wrap)
from plugformer.train.evaluate import evaluate
from plugformer.train.report import Reporter
from plugformer.train.step import (PRECISIONS, NonFinite, compile_blocks, lr_at, optimizer_step,
                                   set_schedule)

__all__ = ["train", "TrainResult", "TrainError", "lr_at", "SCHEDULES", "PRECISIONS",
           "STOP_AFTER_ENV", "STOPPED_EXIT_CODE"]

#: The schedules of `plugformer.train.step.schedule_at` that ``train`` offers, as it always has
#: (``onecycle`` is ``compare``'s default).
SCHEDULES = ("cosine", "constant")
MODEL_FILE = "model.safetensors"
SUMMARY_FILE = "summary.json"
#: Test hook: after this many steps every rank exits at once (``os._exit``), as if killed.
STOP_AFTER_ENV = "PLUGFORMER_TRAIN_STOP_AFTER"
STOPPED_EXIT_CODE = 3


class TrainError(RuntimeError):
    """Training cannot go on (a non-finite loss or gradient); raised on every rank alike."""


@attrs.frozen
class TrainResult:
    """What a `train` call did; the same on every rank.

    Attributes:
        out: the run's folder.
        model_path: the final ``plugformer.save`` file.
        losses: the training loss of each step this call ran (``start_step + 1`` to ``steps``).
        start_step: the step it resumed from (0 for a fresh run).
        steps: the step it ended at.
        world: number of ranks.
        strategy: ``ddp`` or ``fsdp`` (moot when alone).
        evals: held-out scores per task length (empty when evaluation was off).
        tokens_per_s: input tokens per second over all ranks, the first step excluded.
        wall_s: seconds from start to end.
    """

    out: Path
    model_path: Path
    losses: list[float]
    start_step: int
    steps: int
    world: int
    strategy: str
    evals: list[EvalResult]
    tokens_per_s: float
    wall_s: float


def _step_seed(seed: int, step: int, rank: int) -> int:
    return ((int(seed) * 1_000_003 + int(step)) * 4099 + int(rank)) % 2**63


def _check_writable(directory: Path) -> Path:
    """Create ``directory`` if needed and prove it takes a file; a clear error if not."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".plugformer-write-test-"):
            pass
    except OSError as err:
        raise ValueError(f"cannot write to --out {str(directory)!r}: {err.strerror or err}") from None
    return directory


@attrs.define
class _Run:
    """One training run's moving parts (internal to `train`)."""

    where: Dist
    task: Task
    plan: BatchPlan
    model: nn.Module
    optimizer: torch.optim.Optimizer
    state: checkpoint.RunState
    lr: float
    schedule: str
    clip: float
    precision: str

    def step(self, step: int) -> dict[str, Any]:
        """Run optimiser step ``step`` (0-based); returns its metrics record."""
        started = time.perf_counter()
        where, plan, model = self.where, self.plan, self.model
        lr = set_schedule(self.optimizer, step, self.state.steps, self.lr, self.schedule)
        batch = self.task.batch(step, plan.global_batch, kind=unwrap(model).kind, seed=self.state.seed)
        torch.manual_seed(_step_seed(self.state.seed, step, where.rank))
        try:
            done = optimizer_step(model, self.optimizer, batch, plan, where,
                                  precision=self.precision, clip=self.clip)
        except NonFinite as err:
            hint = "lower --lr or use fp32" if err.what == "loss" else "lower --lr"
            raise TrainError(f"{err} at step {step + 1}; {hint}") from None
        seconds = time.perf_counter() - started
        return {"step": step + 1, "loss": done.loss, "lr": lr, "grad_norm": done.grad_norm,
                "tokens_per_s": input_tokens(batch) / seconds, "time_s": seconds}


def _prepare(spec: Union[str, Spec], task: Union[str, Spec, Task], *, out: Path, steps: int,
             batch: int, grad_accum: int, seed: int, strategy: str, resume: bool,
             where: Dist, registry: Optional[Registry]) -> tuple[Task, BatchPlan, nn.Module,
                                                                 checkpoint.RunState, Optional[Path]]:
    """Everything that can fail because of what the user asked, before any collective."""
    from plugformer.registry.builder import build
    from plugformer.tasks.lookup import make_task

    the_task = make_task(task, registry=registry)
    plan = BatchPlan(batch, where.world, grad_accum)
    _check_writable(out)
    torch.manual_seed(seed)
    model = build(spec, registry=registry, device="cpu", vocab=the_task.vocab_size,
                  max_len=the_task.max_len)
    if model.kind not in the_task.kinds:
        raise ValueError(f"task {the_task.name!r} serves {' and '.join(the_task.kinds)} models, "
                         f"and {model.spec.name!r} is {'an' if model.kind == 'lm' else 'a'} "
                         f"{model.kind!r} model")
    state = checkpoint.RunState(step=0, spec=str(model.spec), task=the_task.describe(), batch=batch,
                                seed=seed, steps=steps, world=where.world, strategy=strategy,
                                grad_accum=grad_accum)
    found = checkpoint.latest(out)
    if found is not None and not resume:
        raise ValueError(f"{out} already holds checkpoints (the last: {found.name}); pass --resume "
                         "to continue that run, or choose another --out")
    if found is not None:
        saved = checkpoint.read_state(found)
        saved.check_continues(state, found)
        if saved.step > steps:
            raise ValueError(f"the checkpoint {found} is at step {saved.step}, past --steps {steps}")
    return the_task, plan, model.to(where.device), state, found


def train(
    spec: Union[str, Spec],
    *,
    out: Union[str, Path],
    task: Union[str, Spec, Task] = "copy",
    steps: int = 1000,
    batch: int = 64,
    strategy: str = "ddp",
    lr: float = 3e-3,
    schedule: str = "cosine",
    weight_decay: float = 0.01,
    clip: float = 1.0,
    precision: str = "fp32",
    grad_accum: int = 1,
    compile: bool = False,
    checkpoint_every: int = 0,
    resume: bool = False,
    seed: int = 0,
    device: Union[str, torch.device, None] = None,
    evaluate_at_end: bool = True,
    progress: bool = True,
    registry: Optional[Registry] = None,
) -> TrainResult:
    """Train the model of ``spec`` on ``task``; alone, or data-parallel under ``torchrun``.

    Args:
        spec: the model; its vocabulary and ``max_len`` are set from the task.
        out: folder for ``metrics.jsonl``, ``loss.png``, ``checkpoints/``, ``model.safetensors``
            (with the task's tokenizer on ``text``) and ``summary.json`` (on a filesystem every node sees, for multi-node runs).
        task: a registered task by name or spec (``"copy"``, ``"mqar(pairs=8)"``) or a `Task`.
        steps: optimiser steps in all (a resumed run continues up to it).
        batch: the global batch: examples per optimiser step over all ranks and micro-batches;
            a multiple of ``world size * grad_accum``.
        strategy: ``ddp`` (replicas) or ``fsdp`` (FSDP2, sharded per block); moot when alone.
        lr: peak learning rate of AdamW.
        schedule: ``cosine`` (5% warm-up, decay to zero) or ``constant``; see
            `plugformer.train.step.schedule_at`.
        weight_decay: AdamW weight decay.
        clip: gradient-norm clipping threshold; 0 turns it off.
        precision: ``fp32``, or ``bf16`` (autocast; weights and optimiser state stay fp32).
        grad_accum: micro-batches per rank per step.
        compile: ``torch.compile`` each block before wrapping.
        checkpoint_every: write a DCP checkpoint every this many steps and at the end; 0: never.
        resume: continue from the last checkpoint in ``out`` (from scratch if there is none).
        seed: seeds initialisation, data and dropout.
        device: where each rank computes; None: ``cuda:LOCAL_RANK`` when CUDA is there, else CPU.
        evaluate_at_end: score the held-out set at every task length after training.
        progress: show rank 0's progress bar on stderr.
        registry: where to look parts and tasks up. Default: the default registry.

    Raises:
        ValueError: a bad argument, spec or task, an unwritable ``out``, a batch the ranks
            cannot split, or a checkpoint of another run (`checkpoint.ResumeError`).
        TrainError: a non-finite loss or gradient.
        PeerFailed: another rank failed during setup (it reports why).
    """
    started = time.perf_counter()
    out = Path(out)
    where = setup(device)
    error: Optional[BaseException] = None
    try:
        _validate(steps=steps, lr=lr, schedule=schedule, precision=precision, strategy=strategy,
                  checkpoint_every=checkpoint_every)
        the_task, plan, model, state, found = _prepare(
            spec, task, out=out, steps=steps, batch=batch, grad_accum=grad_accum, seed=seed,
            strategy=strategy, resume=resume, where=where, registry=registry)
    except Exception as err:
        error = err
    try:
        agree(where, error)
    except BaseException:
        where.close()  # every rank knows: the group can be torn down cleanly
        raise

    title = f"{state.spec} on {the_task.describe()}"
    if where.is_main and where.world > 1 and strategy == "fsdp":
        _warn_if_small(model)
    if compile:
        compile_blocks(model)
    wrapped = wrap(model, strategy, where,
                   find_unused_parameters=callable(getattr(model, "aux_loss", None)))
    optimizer = torch.optim.AdamW(wrapped.parameters(), lr=lr, weight_decay=weight_decay, foreach=True)
    start = checkpoint.load(wrapped, optimizer, found, where).step if resume and found is not None else 0
    run = _Run(where=where, task=the_task, plan=plan, model=wrapped, optimizer=optimizer,
               state=state, lr=lr, schedule=schedule, clip=clip, precision=precision)
    stop_after = int(os.environ.get(STOP_AFTER_ENV, "0") or 0)
    losses: list[float] = []
    speeds: list[float] = []
    wrapped.train()
    with Reporter(out, enabled=where.is_main, progress=progress, total=steps, start=start,
                  title=title) as reporter:
        reporter.say(_headline(state, plan, where, strategy, precision, start, resume, found))
        for step in range(start, steps):
            record = run.step(step)
            losses.append(record["loss"])
            speeds.append(record["tokens_per_s"])
            reporter.log(record)
            done = step + 1
            if checkpoint_every and (done % checkpoint_every == 0 or done == steps):
                checkpoint.save(wrapped, optimizer, attrs.evolve(state, step=done), out, where)
            if stop_after and done == stop_after:
                os._exit(STOPPED_EXIT_CODE)
        model_path = out / MODEL_FILE
        checkpoint.export(wrapped, model_path, where, registry=registry,
                          tokenizer=getattr(the_task, "tokenizer", None))
        evals = evaluate(wrapped, the_task, where, precision=precision) if evaluate_at_end else []
        for result in evals:
            reporter.say(f"eval at length {result.length}: {eval_line(result)}")
    result = TrainResult(
        out=out, model_path=model_path, losses=losses, start_step=start, steps=steps,
        world=where.world, strategy=strategy, evals=evals,
        tokens_per_s=_mean(speeds[1:] or speeds), wall_s=time.perf_counter() - started)
    if where.is_main:
        reporter.plot()
        _write_summary(result, state, plan, precision)
        reporter.say(f"saved {model_path}")
    where.barrier()
    where.close()
    return result


def _validate(*, steps: int, lr: float, schedule: str, precision: str, strategy: str,
              checkpoint_every: int) -> None:
    if steps < 1:
        raise ValueError(f"--steps must be >= 1, got {steps}")
    if not lr > 0:
        raise ValueError(f"--lr must be > 0, got {lr}")
    if checkpoint_every < 0:
        raise ValueError(f"--checkpoint-every must be >= 0, got {checkpoint_every}")
    for name, value, allowed in (("schedule", schedule, SCHEDULES), ("precision", precision, PRECISIONS),
                                 ("strategy", strategy, STRATEGIES)):
        if value not in allowed:
            raise ValueError(f"--{name} must be one of {', '.join(allowed)}, got {value!r}")


def _warn_if_small(model: nn.Module) -> None:
    params = sum(p.numel() for p in model.parameters())
    blocks = len(find_blocks(model))
    if blocks == 0:
        warnings.warn("--strategy fsdp: the model has no plugformer Block to shard on its own; "
                      "it becomes one FSDP unit, all-gathered whole (ddp does the same with less "
                      "communication)", stacklevel=3)
    elif params < FSDP_USEFUL_PARAMS:
        warnings.warn(f"--strategy fsdp on a model of {params / 1e6:.2f}M parameters: too small to "
                      "shard usefully (a replica fits on any device; sharding only adds "
                      "communication); --strategy ddp is faster", stacklevel=3)


def _headline(state: checkpoint.RunState, plan: BatchPlan, where: Dist, strategy: str,
              precision: str, start: int, resume: bool, found: Optional[Path]) -> str:
    layout = (f"{where.world} ranks ({strategy})" if where.world > 1 else "1 process")
    text = (f"training {state.spec}\n  on {state.task}: {layout} on {where.device}, {precision}, "
            f"global batch {plan.global_batch} = {where.world} x {plan.accum} micro-batch(es) "
            f"x {plan.micro_rows} rows, steps {state.steps}")
    if resume:
        text += (f"\n  resuming from {found} (step {start})" if found is not None
                 else "\n  --resume: no checkpoint yet, starting from step 0")
    return text


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _write_summary(result: TrainResult, state: checkpoint.RunState, plan: BatchPlan, precision: str) -> None:
    summary = {
        "spec": state.spec, "task": state.task, "steps": result.steps, "batch": plan.global_batch,
        "grad_accum": plan.accum, "seed": state.seed, "world": result.world,
        "strategy": result.strategy, "precision": precision, "start_step": result.start_step,
        "final_loss": result.losses[-1] if result.losses else None,
        "tokens_per_s": result.tokens_per_s, "wall_s": result.wall_s,
        "model": str(result.model_path),
        "evals": [attrs.asdict(e) for e in result.evals],
    }
    (result.out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
