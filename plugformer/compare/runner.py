"""`compare`: train and measure several model variants on one task, on equal terms.

Every variant is built from the same seed, sees the same batches in the same order (a batch is
a function of the seed and the step), trains with the same optimiser and schedule, and is timed
round-robin with the others, so that what differs between rows is the variants themselves.

The phases, in order:

1. Resolve the task and build every variant. Any variant that does not build, or that the task
   cannot serve, stops the comparison here, before anything trains (`CompareError`).
2. Measure each variant on one training batch: parameters, FLOPs, peak memory, then forward and
   forward+backward time, round-robin across variants (:mod:`plugformer.compare.measure`).
3. Runs (:mod:`plugformer.compare.runs`): every variant at every learning rate of the grid on
   every seed, or, under a step budget, successive halving over (variant × rate) and then seeds
   for the survivors (:mod:`plugformer.compare.search`). Each run is scored on the eval split
   (reported) and on a validation split carved from the training side (for choosing the rate),
   and written to ``out/runs.jsonl`` as it ends; ``resume`` reads the finished ones back. A run
   that fails — an exception, out of memory, a non-finite loss or gradient — is recorded with
   the reason; the others go on.
4. The rows: per variant, the rate with the best mean validation score over seeds; the table
   gives every metric as a mean with a 95% interval over seeds and marks the variants that are
   distinguishable from the best (:mod:`plugformer.compare.summary`).
"""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Optional, Sequence, Union

import torch

import plugformer
from plugformer.compare import timing
from plugformer.compare.measure import measure
from plugformer.compare.progress import Progress, reporter
from plugformer.compare.result import Comparison
from plugformer.compare.summary import rows_from_runs
from plugformer.compare.runs import RunSettings, execute
from plugformer.compare.search import Candidate, successive_halving
from plugformer.compare.store import RunPlan, RunRecord, RunStore, environment
from plugformer.compare.variants import CompareError, Variant, build_variants
from plugformer.registry.registry import Registry
from plugformer.registry.spec import Spec
from plugformer.tasks.base import Task
from plugformer.tasks.lookup import make_task
from plugformer.train.data import BatchPlan, slice_rows
from plugformer.train.step import PRECISIONS, SCHEDULES, compile_blocks

if TYPE_CHECKING:
    from plugformer.compare.db import RunQueue

__all__ = ["compare", "CompareError", "Interrupted", "Progress", "make_task"]

_log = logging.getLogger("plugformer")


class Interrupted(KeyboardInterrupt):
    """A comparison stopped by Ctrl-C; ``comparison`` holds what finished before it.

    Attributes:
        comparison: a `Comparison` of the runs that finished (on disk too when ``out`` was given).
    """

    def __init__(self, comparison: Comparison) -> None:
        super().__init__("comparison interrupted")
        self.comparison = comparison


def _rates(lr: Union[float, Sequence[float]]) -> list[float]:
    rates = [float(lr)] if isinstance(lr, (int, float)) else [float(x) for x in lr]
    if not rates or not all(x > 0 for x in rates):
        raise ValueError(f"lr must be a positive rate or a non-empty list of them, got {lr!r}")
    return list(dict.fromkeys(rates))


def _store(out: Union[str, os.PathLike, None], resume: bool) -> Optional[RunStore]:
    if out is None:
        if resume:
            raise ValueError("resume=True needs out=: the folder whose runs.jsonl to continue")
        return None
    store = RunStore(out)
    if not resume and store.path.exists() and store.read():
        raise ValueError(f"{store.path} already holds runs of an earlier comparison: resume it "
                         f"(--resume / resume=True) or give another --out")
    return store


def compare(
    specs: Union[str, Spec, Iterable[Union[str, Spec]]],
    task: Union[str, Spec, Task] = "copy",
    *,
    steps: int = 1000,
    batch: int = 64,
    lr: Union[float, Sequence[float]] = 3e-3,
    seed: int = 0,
    seeds: int = 1,
    budget: Optional[int] = None,
    target: Optional[float] = None,
    out: Union[str, os.PathLike, None] = None,
    resume: bool = False,
    curve_points: int = 10,
    device: Union[str, torch.device] = "cpu",
    eval_lengths: Optional[Iterable[int]] = None,
    task_args: Optional[Mapping[str, Any]] = None,
    progress: Any = True,
    timing_repeats: int = 5,
    schedule: str = "onecycle",
    weight_decay: float = 0.01,
    clip: float = 1.0,
    precision: str = "fp32",
    compile: bool = False,
    grad_accum: int = 1,
    registry: Optional[Registry] = None,
    queue: Optional["RunQueue"] = None,
) -> Comparison:
    """Train and measure model variants on one task, on equal terms, over seeds and rates.

    Args:
        specs: the variants: a list of spec strings or `Spec`\\ s, or one spec whose ``{a, b}``
            choices expand to several (``"transformer_tiny(attn={dense, fused})"``).
        task: a registered task by name or spec (``"copy"``, ``"mqar(pairs=16)"``), or a `Task`.
        steps: training steps per run (ignored under ``budget``, which sizes the runs).
        batch: examples per optimiser step (split into ``grad_accum`` micro-batches).
        lr: peak learning rate of AdamW, or a grid of them: every variant trains at each and is
            reported at the one with the best mean validation score over seeds.
        seed: the first seed; seeds are ``seed, seed + 1, ...``. Each seeds the model
            initialisation, the data order and dropout, the same for every variant.
        seeds: how many seeds every reported variant runs on (>= 2 gives intervals and marks).
        budget: total optimiser steps over all runs: successive halving over (variant × rate),
            then the other seeds for the survivors (`plugformer.compare.search`).
        target: a value of the primary metric (0.99): the table adds steps, seconds and FLOPs
            to reach it, read from the learning curve.
        out: a folder: each run is appended to ``out/runs.jsonl`` as it ends, and the table,
            CSV, JSON, figure and ``report.html`` are written there at the end.
        resume: continue the comparison in ``out``: runs already on disk are read back, not run.
        curve_points: evaluations on the eval split during each run (the learning curve the
            equal-cost views read); 0 for none.
        device: where the models run.
        eval_lengths: further task lengths to evaluate after training (length generalisation).
        task_args: arguments of the task (``{"length": 8}``), over those of its spec.
        progress: True (the default): bars in a terminal or Jupyter, log lines otherwise;
            False or None: silent; a callable: called with a `Progress` at every event.
        timing_repeats: timed rounds; the median is reported.
        schedule: ``onecycle`` (the default here), ``cosine`` (5% warm-up) or ``constant``.
        weight_decay: AdamW weight decay.
        clip: gradient-norm clipping threshold; 0 turns it off.
        precision: ``fp32``, or ``bf16`` (autocast; weights and optimiser state stay fp32).
        compile: ``torch.compile`` every block of each model (after its FLOPs are counted).
        grad_accum: micro-batches per optimiser step; ``batch`` must be a multiple of it.
        registry: where to look parts and tasks up. Default: the default registry.
        queue: a `plugformer.compare.db.RunQueue`: the runs are planned in its database and
            this process works on them beside other workers (`plugformer.compare.workers`);
            ``out`` then gets the results but no ``runs.jsonl`` and ``resume`` is not needed
            (the database keeps what finished).

    Returns:
        A `Comparison`: one row per variant (at its chosen rate), every run in ``runs``, and
        what a search did in ``search``.

    Raises:
        ValueError: a bad number or choice (``steps``, ``lr``, ``seeds``, ``budget``,
            ``schedule``, ``precision``, a ``batch`` that ``grad_accum`` does not divide), or an
            ``out`` holding an earlier comparison without ``resume``.
        SpecError: the task is unknown (with did-you-mean) or its arguments are wrong.
        CompareError: a variant does not parse or build, or the task cannot serve it; raised
            before anything trains.
        Interrupted: on Ctrl-C, with the `Comparison` of what finished (a KeyboardInterrupt).
    """
    if steps < 1 or batch < 1:
        raise ValueError(f"steps and batch must be >= 1, got steps={steps}, batch={batch}")
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    if budget is not None and budget < 1:
        raise ValueError(f"budget must be a positive number of steps, got {budget}")
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    rates = _rates(lr)
    plan = BatchPlan(batch, 1, grad_accum)
    store = _store(out, resume) if queue is None else None
    started = time.perf_counter()
    device = torch.device(device)
    the_task = make_task(task, task_args=task_args, eval_lengths=eval_lengths, registry=registry)
    variants = build_variants(specs, the_task, seed=seed, device=device, registry=registry)
    primary = f"{the_task.primary_metric}@{the_task.length}"
    settings = RunSettings(batch=batch, device=str(device), schedule=schedule,
                           weight_decay=weight_decay, clip=clip, precision=precision,
                           compile=compile, grad_accum=grad_accum, curve_points=curve_points,
                           figures=None if out is None else str(out))
    described = {
        "steps": steps, "batch": batch, "lr": rates[0] if len(rates) == 1 else rates,
        "seed": seed, "seeds": seeds, "budget": budget, "target": target, "device": str(device),
        "schedule": schedule, "weight_decay": weight_decay, "clip": clip,
        "precision": precision, "compile": compile, "grad_accum": grad_accum,
        "curve_points": curve_points, "timing_repeats": timing_repeats, "optimizer": "AdamW",
        "memory_method": timing.MEMORY_METHOD.get(device.type, "not measured"),
        "validation": "training-split examples from a seed of their own (Task.validation_batches)",
        "torch": torch.__version__, "plugformer": plugformer.__version__,
        "threads": torch.get_num_threads(),
    }
    done = {(r.key, r.variant): r for r in store.read()} if store is not None and resume else {}
    info = {**environment(), "device": str(device)}
    records: list[RunRecord] = []

    with reporter(progress) as callback:
        def notify(variant: Variant, stage: str, **event: Any) -> None:
            if callback is not None:
                callback(Progress(variant=variant.row.index, variants=len(variants),
                                  label=variant.row.label, stage=stage, **event))

        kinds = {v.row.kind for v in variants}
        for kind in kinds:
            probe = slice_rows(the_task.batch(0, batch, seed=seed, kind=kind), plan.rows(0, 0))
            measure([v for v in variants if v.row.kind == kind], probe.to(device), device,
                    timing_repeats, notify, precision=precision,
                    compiler=compile_blocks if compile else None)
        by_label = {v.row.label: v for v in variants}
        for variant in variants:
            variant.model = None  # each run builds its own from its seed

        def plan_of(candidate: Candidate, run_seed: int, run_steps: int) -> RunPlan:
            return RunPlan(spec=by_label[candidate.variant].row.spec, task=the_task.describe(),
                           seed=run_seed, lr=candidate.lr, steps=run_steps)

        def train(label: str, planned: RunPlan) -> RunRecord:
            variant = by_label[label]
            where = dict(run=len(records), runs=max(len(records) + 1, expected),
                         seed=planned.seed, lr=planned.lr, steps=planned.steps)
            record = execute(
                planned, written=variant.row.written, label=label, task=the_task,
                primary=primary, settings=settings, registry=registry,
                compiler=compile_blocks if compile else None,
                info={**info, "params": variant.row.params,
                      "flops_fwd_bwd": variant.row.flops_fwd_bwd},
                flops_fwd_bwd=variant.row.flops_fwd_bwd,
                notify=lambda stage, **e: notify(variant, stage, **{**where, **e}))
            stage = "done" if record.status == "ok" else "failed"
            notify(variant, stage, message=record.error, **{**where, "step": record.steps_done})
            return record

        def run(candidate: Candidate, run_seed: int, run_steps: int) -> RunRecord:
            planned = plan_of(candidate, run_seed, run_steps)
            if (planned.key, candidate.variant) in done:
                notify(by_label[candidate.variant], "skipped", step=run_steps, run=len(records),
                       runs=max(len(records) + 1, expected), seed=run_seed, lr=candidate.lr,
                       steps=run_steps)
                record = done[(planned.key, candidate.variant)]
            else:
                record = train(candidate.variant, planned)
                if store is not None:
                    store.append(record)
            records.append(record)
            return record

        def run_many(jobs: list[tuple[Candidate, int, int]]) -> list[RunRecord]:
            if queue is None:
                return [run(*job) for job in jobs]
            got = queue.run([(job[0].variant, plan_of(*job)) for job in jobs], train)
            records.extend(got)
            return got

        standing = [v for v in variants if v.row.ok]
        candidates = [Candidate(v.row.label, rate) for v in standing for rate in rates]
        seed_list = [seed + i for i in range(seeds)]
        expected = len(candidates) * seeds
        search: dict[str, Any] = {}
        try:
            if budget is not None:
                for variant in variants:
                    if not variant.row.ok:
                        notify(variant, "failed", message=variant.row.error)
                if candidates:
                    _, search = successive_halving(candidates, budget=budget, seeds=seed_list,
                                                   run=run, metric=f"val_{primary}",
                                                   run_many=run_many)
            else:
                grid: list[tuple[Candidate, int, int]] = []  # for the workers, all at once
                for run_seed in seed_list:
                    for variant in variants:
                        if not variant.row.ok and run_seed == seed:
                            notify(variant, "failed", message=variant.row.error)
                        jobs = [(Candidate(variant.row.label, rate), run_seed, steps)
                                for rate in (rates if variant.row.ok else ())]
                        if queue is None:
                            run_many(jobs)
                        else:
                            grid.extend(jobs)
                if grid:
                    run_many(grid)
        except KeyboardInterrupt:
            _log.warning("interrupted: %d run(s) finished", len(records))
            described.update(interrupted=True, wall_s=time.perf_counter() - started)
            raise Interrupted(_comparison(variants, records, the_task, search, described)) from None

    described.update(interrupted=False, wall_s=time.perf_counter() - started)
    result = _comparison(variants, records, the_task, search, described)
    if out is not None:
        paths = result.save(out)
        _log.info("wrote %s", ", ".join(os.fspath(p) for p in paths.values()))
    return result


def _comparison(variants: list[Variant], records: list[RunRecord], task: Task,
                search: dict[str, Any], settings: dict[str, Any]) -> Comparison:
    """The `Comparison` of ``records``: rows at each variant's chosen rate."""
    rows = [v.row for v in variants]
    rows_from_runs(rows, records, search)
    return Comparison(rows=rows, task=task.describe(), primary_metric=task.primary_metric,
                      lengths=list(task.lengths), settings=settings, runs=list(records),
                      search=search)
