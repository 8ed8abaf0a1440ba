"""A step budget spent by successive halving over (variant × learning rate), then seeds for the
survivors (Jamieson & Talwalkar, AISTATS 2016; Li et al., Hyperband, JMLR 2018).

Every candidate trains for a few steps and is scored on the validation split; the better half
goes on to a rung with twice the steps, until two or fewer are left; those survivors then train
on the remaining seeds at the last rung's steps. Each rung is a run of its own, trained from
scratch with its full schedule (a run's one-cycle schedule is defined by its length, so a run
cannot be stretched), and every run is a `RunPlan` on disk: the search keeps no state but the
store, and a resumed search recomputes the same decisions from the same records.

The rung sizes are fixed before anything trains, so the total never exceeds the budget: with
``n_r`` candidates at rung ``r`` and ``k`` survivors, rung ``r`` gets
``s_r = floor(B · 2^r / U)`` steps, ``U = Σ_r n_r·2^r + k·(seeds - 1)·2^(R-1)``, and
``Σ_r n_r·s_r + k·(seeds - 1)·s_(R-1) <= B``. Optuna's pruners decide asynchronously, trial by
trial, and give no such bound, which is why the loop is this small synchronous one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Optional

import attrs

from plugformer.compare.stats import higher_is_better, interval
from plugformer.compare.store import RunRecord

__all__ = ["Candidate", "Rung", "annotate", "plan_rungs", "successive_halving"]


@attrs.frozen
class Candidate:
    """One point of the grid: a variant (by label) at a peak learning rate."""

    variant: str
    lr: float


@attrs.frozen
class Rung:
    """``candidates`` train for ``steps`` steps each."""

    candidates: int
    steps: int


def plan_rungs(candidates: int, budget: int, seeds: int) -> tuple[list[Rung], int]:
    """The rungs of a search over ``candidates`` under ``budget`` total steps, and how many
    survivors then train on the other ``seeds - 1`` seeds (see the module for the formula).

    Raises:
        ValueError: a count below 1, or a budget too small to give every rung a step; the
            message says the smallest budget that works.
    """
    if candidates < 1 or seeds < 1:
        raise ValueError(f"candidates and seeds must be >= 1, got {candidates} and {seeds}")
    sizes = [candidates]
    while sizes[-1] > 2:
        sizes.append(math.ceil(sizes[-1] / 2))
    survivors = sizes[-1]
    last = 2 ** (len(sizes) - 1)
    units = sum(n * 2**r for r, n in enumerate(sizes)) + survivors * (seeds - 1) * last
    if budget < units:
        raise ValueError(f"--budget {budget} is too small for successive halving over "
                         f"{candidates} candidates with {seeds} seed(s): it needs at least "
                         f"{units} steps (one at the first rung); give a larger budget")
    rungs = [Rung(candidates=n, steps=budget * 2**r // units) for r, n in enumerate(sizes)]
    return rungs, survivors


def successive_halving(
    candidates: Sequence[Candidate],
    *,
    budget: int,
    seeds: Sequence[int],
    run: Callable[[Candidate, int, int], RunRecord],
    metric: str,
    run_many: Optional[Callable[[list[tuple[Candidate, int, int]]], list[RunRecord]]] = None,
) -> tuple[list[RunRecord], dict[str, Any]]:
    """Spend ``budget`` steps over ``candidates``; returns every run and what the search did.

    Args:
        candidates: the grid, in the comparison's order (ties go to the earlier one).
        budget: total optimiser steps over every run.
        seeds: the seeds; rungs train on the first, survivors on all of them.
        run: ``run(candidate, seed, steps) -> RunRecord``: trains it, or reads it from disk.
        metric: the validation key the rungs rank by, e.g. ``val_exact_match@16``.
        run_many: ``run_many([(candidate, seed, steps), ...]) -> [RunRecord, ...]`` in the same
            order: one rung's runs (and then the survivors' seeds) at once, which do not depend
            on each other, so that several workers can share them. Default: ``run`` on each.

    Returns:
        (runs in the order they were made, a summary: ``budget``, ``spent``, ``rungs``,
        ``candidates`` (variant, lr, steps, rungs reached, last validation value, reason) and
        ``winner`` (variant, lr, mean validation value over seeds)).
    """
    rungs, survivors = plan_rungs(len(candidates), budget, len(seeds))
    if run_many is None:
        run_many = lambda jobs: [run(*job) for job in jobs]  # noqa: E731
    sign = 1.0 if higher_is_better(metric) else -1.0
    records: list[RunRecord] = []
    got = {c: {"steps": 0, "rungs": 0, "val": None, "reason": ""} for c in candidates}

    def score(record: RunRecord) -> float:
        value = record.metrics.get(metric)
        return -math.inf if record.status != "ok" or value is None or not math.isfinite(value) \
            else sign * value

    alive = list(candidates)
    for number, rung in enumerate(rungs, start=1):
        scored = []
        done = run_many([(candidate, seeds[0], rung.steps) for candidate in alive])
        for candidate, record in zip(alive, done):
            records.append(record)
            got[candidate].update(steps=got[candidate]["steps"] + rung.steps, rungs=number,
                                  val=record.metrics.get(metric))
            scored.append((score(record), candidate))
        keep = rungs[number].candidates if number < len(rungs) else survivors
        ranked = [c for _, c in sorted(scored, key=lambda pair: -pair[0])]
        for rank, candidate in enumerate(ranked, start=1):
            if rank > keep:
                got[candidate]["reason"] = (
                    f"stopped after rung {number} of {len(rungs)}: {metric} ranked {rank} of "
                    f"{len(ranked)}, the best {keep} went on")
        alive = [c for c in alive if c in ranked[:keep]]
    final = rungs[-1].steps
    per_seed: dict[Candidate, list[Optional[float]]] = {c: [got[c]["val"]] for c in alive}
    jobs = [(candidate, seed, final) for candidate in alive for seed in seeds[1:]]
    for (candidate, _, _), record in zip(jobs, run_many(jobs)):
        records.append(record)
        got[candidate]["steps"] += final
        per_seed[candidate].append(record.metrics.get(metric) if record.status == "ok" else None)
    for candidate in alive:
        got[candidate]["reason"] = (f"survived all {len(rungs)} rungs; trained on {len(seeds)} "
                                    f"seed(s) at {final} steps")
    means = {c: interval(values).mean for c, values in per_seed.items()}
    winner = max(alive, key=lambda c: -math.inf if math.isnan(means[c]) else sign * means[c])
    summary = {
        "budget": budget, "metric": metric,
        "spent": sum(r.steps for r in records),
        "rungs": [attrs.asdict(r) for r in rungs],
        "candidates": [{"variant": c.variant, "lr": c.lr, **got[c]} for c in candidates],
        "winner": {"variant": winner.variant, "lr": winner.lr, "val": means[winner]},
    }
    return records, summary


def annotate(records: Sequence[RunRecord], search: Optional[dict[str, Any]]) -> list[RunRecord]:
    """Copies of ``records`` in which each candidate's last run says, in ``error``, how many
    steps the candidate got and why it stopped (for the report's table of runs); ``records``
    themselves when there was no search."""
    if not search:
        return list(records)
    last: dict[tuple[str, float], int] = {}
    for index, record in enumerate(records):
        last[(record.variant, float(record.lr))] = index
    notes = {(c["variant"], float(c["lr"])): f"{c['steps']} steps in all; {c['reason']}"
             for c in search.get("candidates", [])}
    out = []
    for index, record in enumerate(records):
        key = (record.variant, float(record.lr))
        if last.get(key) == index and key in notes and record.status == "ok":
            record = attrs.evolve(record, error=notes[key])
        out.append(record)
    return out
