"""One run of a comparison: build a variant from a seed, train it at one learning rate for a
number of steps, score it on the eval split (reported) and on the validation split (for choosing),
and return everything as a `RunRecord`.

A run is a function of its `RunPlan` (spec, task, seed, rate, steps) and the shared
`RunSettings`: the model is built after ``torch.manual_seed(seed)``, batch ``i`` is
``task.batch(i, seed=seed)``, and scoring the learning curve uses no randomness, so the same plan
gives the same numbers in every process (what ``--resume`` relies on).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Optional

import attrs
import torch
from torch import nn

from plugformer.compare.cost import training_flops
from plugformer.compare.store import RunPlan, RunRecord
from plugformer.registry.builder import build
from plugformer.registry.registry import Registry, default_registry
from plugformer.tasks.base import Batch, Task
from plugformer.tasks.metrics import METRIC_KEYS, batch_metrics, eval_result, scores_of
from plugformer.train.data import BatchPlan
from plugformer.train.distributed import Dist
from plugformer.train.evaluate import evaluate
from plugformer.train.step import NonFinite, autocast, optimizer_step, set_schedule

__all__ = ["RunSettings", "execute", "curve_steps"]

#: ``notify(stage, step=..., loss=..., message=...)``: what a run reports as it goes.
Notify = Callable[..., None]


@attrs.frozen
class RunSettings:
    """What every run of a comparison shares (see `plugformer.compare.compare` for each)."""

    batch: int
    device: str
    schedule: str = "onecycle"
    weight_decay: float = 0.01
    clip: float = 1.0
    precision: str = "fp32"
    compile: bool = False
    grad_accum: int = 1
    curve_points: int = 10
    figures: Optional[str] = None


def curve_steps(steps: int, points: int) -> list[int]:
    """The steps after which the learning curve is scored: ``points`` evenly spaced, the last
    one at ``steps`` (fewer when ``steps < points``; none when ``points`` is 0)."""
    if points < 1:
        return []
    return sorted({max(1, round(steps * i / points)) for i in range(1, points + 1)})


def _score(model: nn.Module, batches: list[Batch], length: int, device: torch.device,
           precision: str) -> dict[str, float]:
    """The scores (`tasks.metrics.SCORES`) of ``model`` on ``batches``."""
    totals = dict.fromkeys(METRIC_KEYS, 0.0)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for batch in batches:
            batch = batch.to(device)
            with autocast(device, precision):
                logits = batch.logits(model)
            for key, value in batch_metrics(logits, batch.targets, getattr(batch, "target_bytes", None)).items():
                totals[key] += value
    model.train(was_training)
    return scores_of(eval_result(length, totals))


def model_diagnostics(model: nn.Module, batch: Batch, registry: Optional[Registry] = None) -> dict[str, float]:
    """What the plugins' ``plugformer_model_diagnostics`` hooks say about ``model`` run on
    ``batch`` (e.g. BRA's route recall), merged; empty when no plugin has anything to say."""
    found: dict[str, float] = {}
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for answer in (registry or default_registry()).hook.plugformer_model_diagnostics(
                model=model, run=batch.logits):
            found.update(answer or {})
    model.train(was_training)
    return found


def model_figures(model: nn.Module, batch: Batch, root: Path, key: str,
                  registry: Optional[Registry] = None) -> dict[str, str]:
    """The plugins' ``plugformer_model_figures`` of ``model`` on ``batch``, written under
    ``root/figures/<run key>/``: title -> path relative to ``root`` (where the report lives)."""
    directory = root / "figures" / key
    directory.mkdir(parents=True, exist_ok=True)
    found: dict[str, str] = {}
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for answer in (registry or default_registry()).hook.plugformer_model_figures(
                model=model, run=batch.logits, directory=directory):
            found.update({title: Path(path).relative_to(root).as_posix() for title, path in (answer or {}).items()})
    model.train(was_training)
    for empty in (directory, directory.parent):  # no plugin drew anything: leave no folder
        if not any(empty.iterdir()):
            empty.rmdir()
    return found


def execute(plan: RunPlan, *, written: str, label: str, task: Task, primary: str,
            settings: RunSettings, info: dict[str, Any], flops_fwd_bwd: Optional[int] = None,
            registry: Optional[Registry] = None, notify: Notify = lambda *a, **k: None,
            compiler: Optional[Callable[[nn.Module], object]] = None) -> RunRecord:
    """Train and score one run; a run-time failure (non-finite loss, an exception, out of
    memory) is returned as a record with ``status="failed"``, never raised.

    Args:
        plan: the run: canonical spec (for the key), task, seed, peak rate, steps.
        written: the spec the variant was built from (built again here from ``plan.seed``).
        label: the variant's label in the comparison.
        task: the task ``plan.task`` describes.
        primary: the ranking key, ``<metric>@<training length>``.
        settings: what every run shares.
        info: the run card's fixed part (environment, device, parameters), copied in.
        flops_fwd_bwd: FLOPs of one forward+backward on a micro-batch, for the curve's FLOPs.
        registry: where the variant's parts are looked up.
        notify: progress callback, ``notify(stage, step=, loss=, message=)``.
        compiler: compiles the model in place before training (``settings.compile``), e.g.
            `plugformer.train.step.compile_blocks`.

    Raises:
        KeyboardInterrupt: passed on, so that the caller can show what finished.
    """
    device = torch.device(settings.device)
    record = RunRecord(variant=label, spec=plan.spec, task=plan.task, seed=plan.seed, lr=plan.lr,
                       steps=plan.steps, primary=primary, info=dict(info))
    metric, _, length_text = primary.partition("@")
    length = int(length_text) if length_text else task.length
    step_flops = None if flops_fwd_bwd is None else flops_fwd_bwd * settings.grad_accum
    started = time.perf_counter()
    training = 0.0
    try:
        torch.manual_seed(plan.seed)
        model = build(written, registry=registry, device=device, vocab=task.vocab_size,
                      max_len=task.max_len)
        if compiler is not None:
            compiler(model)
        torch.manual_seed(plan.seed)
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=plan.lr,
                                      weight_decay=settings.weight_decay, foreach=True)
        batches = BatchPlan(settings.batch, 1, settings.grad_accum)
        where = Dist(device=device)
        scored_at = set(curve_steps(plan.steps, settings.curve_points))
        held_out = task.eval_batches(length, model.kind)
        tick = time.perf_counter()
        for step in range(plan.steps):
            set_schedule(optimizer, step, plan.steps, plan.lr, settings.schedule)
            batch = task.batch(step, settings.batch, seed=plan.seed, kind=model.kind)
            try:
                done = optimizer_step(model, optimizer, batch, batches, where,
                                      precision=settings.precision, clip=settings.clip)
            except NonFinite as err:
                raise _RunFailed(f"{err} at step {step}") from None
            record.losses.append(done.loss)
            record.steps_done = step + 1
            notify("train", step=step + 1, loss=done.loss)
            if step + 1 in scored_at:
                training += time.perf_counter() - tick
                scores = _score(model, held_out, length, device, settings.precision)
                record.curve.append({"step": step + 1, "seconds": training,
                                     "flops": training_flops(step + 1, step_flops),
                                     primary: scores[metric], f"loss@{length}": scores["loss"]})
                tick = time.perf_counter()
        training += time.perf_counter() - tick
        record.times["train_s"] = training
        notify("eval", step=plan.steps)
        tick = time.perf_counter()
        for scores in evaluate(model, task, where, precision=settings.precision):
            record.metrics.update({f"{name}@{scores.length}": value
                                   for name, value in scores_of(scores).items()})
        validation = _score(model, task.validation_batches(length, model.kind), length, device,
                            settings.precision)
        record.metrics.update({f"val_{name}@{length}": value for name, value in validation.items()})
        diagnostics = model_diagnostics(model, held_out[0].to(device), registry)
        if settings.figures is not None:
            record.info["figures"] = model_figures(model, held_out[0].to(device),
                                                   Path(settings.figures), plan.key, registry)
        record.metrics.update(diagnostics)
        record.info["diagnostics"] = sorted(diagnostics)
        tail = record.losses[-max(1, len(record.losses) // 20):]
        record.metrics["final_loss"] = sum(tail) / len(tail)
        record.times["eval_s"] = time.perf_counter() - tick
    except KeyboardInterrupt:
        raise
    except Exception as err:
        record.status = "failed"
        record.error = _reason(err)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    record.times["wall_s"] = time.perf_counter() - started
    return record


class _RunFailed(Exception):
    """A run-time failure whose message is the whole reason."""


def _reason(err: BaseException) -> str:
    if isinstance(err, _RunFailed):
        return str(err)
    if isinstance(err, torch.OutOfMemoryError):
        return f"out of memory: {str(err).splitlines()[0]}"
    return f"{type(err).__name__}: {err}"
