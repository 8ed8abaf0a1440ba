"""From runs to rows and to the table a researcher reads: per variant its chosen learning rate,
every metric as a mean with a 95% interval over seeds, and a mark against the best variant on
the primary metric (`plugformer.compare.stats`).

The rate of a variant is the one with the best mean over seeds of ``val_<primary>`` (the
validation split, never the reported eval split; `plugformer.compare.report.choose_runs`). Under
a search, a variant is reported at the candidate that went furthest.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Optional

from plugformer.compare.cost import cost_to_reach
from plugformer.compare.report import choose_runs
from plugformer.compare.stats import INTERVAL_NOTE, MARKS, Interval, compare_to_best, higher_is_better, interval
from plugformer.compare.store import RunRecord
from plugformer.compare.units import si_count
from plugformer.tasks.metrics import SCORES, is_fraction, result_from_scores, short_name

__all__ = ["reported_runs", "rows_from_runs", "table_lines", "verdicts"]

_MIB = 2**20


def reported_runs(records: Sequence[RunRecord], search: Optional[dict[str, Any]]) -> list[RunRecord]:
    """``records`` less, under a search, the rates of each variant that got fewer steps than
    its furthest candidate (a rate stopped after a short rung is not comparable with a longer
    one)."""
    if not search:
        return list(records)
    most: dict[str, int] = {}
    for candidate in search.get("candidates", []):
        most[candidate["variant"]] = max(most.get(candidate["variant"], 0), candidate["steps"])
    furthest = {(c["variant"], float(c["lr"])) for c in search.get("candidates", [])
                if c["steps"] == most[c["variant"]]}
    return [r for r in records if r.variant not in most or (r.variant, float(r.lr)) in furthest]


def rows_from_runs(rows: Sequence[Any], records: Sequence[RunRecord],
                   search: Optional[dict[str, Any]] = None) -> None:
    """Fill each `VariantResult` in ``rows`` from its chosen runs (in place): the rate, the
    seeds, and the first seed's losses, scores and times (what the single-seed table, CSV and
    plot show). A variant with no run yet (an interrupted comparison) gets status ``not run``."""
    chosen, how = choose_runs(reported_runs(records, search)) if records else ({}, {})
    for row in rows:
        runs = chosen.get(row.label)
        if not runs:
            if row.status == "ok":
                row.status, row.error = "not run", "the comparison stopped before this variant ran"
            continue
        ok = [r for r in runs if r.status == "ok"]
        first = (ok or runs)[0]
        row.lr, row.lr_choice, row.seeds = first.lr, how[row.label], [r.seed for r in runs]
        row.status = "ok" if ok else "failed"
        row.error = None if ok else first.error
        row.losses = list(first.losses)
        row.steps_done = first.steps_done
        row.train_s, row.eval_s = first.times.get("train_s"), first.times.get("eval_s")
        row.diagnostics = {name: first.metrics[name] for name in first.info.get("diagnostics", ())
                           if name in first.metrics}
        lengths = sorted({int(k.rpartition("@")[2]) for k in first.metrics
                          if "@" in k and not k.startswith("val_")})
        row.evals = [result_from_scores(length, {name: first.metrics.get(f"{name}@{length}")
                                                 for name in SCORES})
                     for length in lengths if f"loss@{length}" in first.metrics]


def _chosen(comparison: Any) -> dict[str, list[RunRecord]]:
    chosen, _ = choose_runs(reported_runs(comparison.runs, comparison.search))
    return {label: [r for r in runs if r.status == "ok"] for label, runs in chosen.items()}


def verdicts(comparison: Any) -> dict[str, Any]:
    """Variant label -> `plugformer.compare.stats.Verdict` on the primary metric at the
    training length, paired by seed, Holm-corrected."""
    primary = f"{comparison.primary_metric}@{comparison.lengths[0]}"
    per_seed = {label: {r.seed: r.metrics.get(primary) for r in runs}
                for label, runs in _chosen(comparison).items()}
    return compare_to_best(per_seed, higher_is_better=higher_is_better(primary))


def _fmt(summary: Interval, *, percent: bool = False, scale: float = 1.0, digits: int = 3) -> str:
    if summary.n == 0:
        return "-"
    if percent:
        text = summary.format(scale=100, digits=1, unit="%")
    else:
        text = summary.format(scale=scale, digits=digits, significant=True)
    return text.replace(" (1 seed)", "")


def table_lines(comparison: Any) -> tuple[list[tuple[str, list[str]]], list[str]]:
    """The columns (header, cells) and the footnotes of the seed-aware table."""
    chosen = _chosen(comparison)
    marks = verdicts(comparison)
    primary = f"{comparison.primary_metric}@{comparison.lengths[0]}"
    target = comparison.settings.get("target")
    rows = comparison.rows

    def over(row: Any, get: Any) -> Interval:
        return interval([get(r) for r in chosen.get(row.label, [])])

    def mark(row: Any) -> str:
        verdict = marks.get(row.label)
        if verdict is None:
            return "-"
        if verdict.mark in ("worse", "tied") and verdict.p_value is not None:
            p = "p<0.001" if verdict.p_value < 0.001 else f"p={verdict.p_value:.2g}"
            return f"{verdict.mark} ({p})"
        return "n/a" if verdict.mark == "not enough seeds" else verdict.mark

    metric = short_name(comparison.primary_metric)
    percent = is_fraction(comparison.primary_metric)
    columns: list[tuple[str, list[str]]] = [
        ("variant", [row.label for row in rows]),
        ("mark", [mark(row) for row in rows]),
        ("lr", [f"{row.lr:g}" if row.lr is not None else "-" for row in rows]),
        ("seeds", [str(len(chosen.get(row.label, []))) for row in rows]),
        ("params", [si_count(row.params) for row in rows]),
        ("FLOPs fwd", [si_count(row.flops_fwd) for row in rows]),
        ("fwd+bwd ms", [_plain(row.time_fwd_bwd_s, 1e3, 2) for row in rows]),
        ("peak MiB", [_plain(row.mem_fwd_bwd_bytes, 1 / _MIB, 1) for row in rows]),
        ("final loss", [_fmt(over(row, lambda r: r.metrics.get("final_loss"))) for row in rows]),
    ]
    for length in comparison.lengths:
        key = f"{comparison.primary_metric}@{length}"
        columns.append((f"{metric}@{length}",
                        [_fmt(over(row, lambda r, k=key: r.metrics.get(k)), percent=percent) for row in rows]))
    if comparison.primary_metric == "exact_match":
        for length in comparison.lengths:
            key = f"accuracy@{length}"
            columns.append((f"tok acc@{length}",
                            [_fmt(over(row, lambda r, k=key: r.metrics.get(k)), percent=True) for row in rows]))
    for name in dict.fromkeys(name for row in rows for name in row.diagnostics):
        columns.append((name.replace("_", " "),
                        [_fmt(over(row, lambda r, k=name: r.metrics.get(k))) for row in rows]))
    columns.append((f"val {metric}", [_fmt(over(row, lambda r: r.metrics.get(f"val_{primary}")), percent=percent)
                                      for row in rows]))
    if target is not None:
        for name, attribute in (("steps", "step"), ("s", "seconds"), ("FLOPs", "flops")):
            cells = []
            for row in rows:
                runs = chosen.get(row.label, [])
                hits = [cost_to_reach(r.curve, target, metric=primary) for r in runs]
                values = [getattr(h, attribute) for h in hits if h is not None]
                reached = f" ({len(values)}/{len(runs)})" if len(values) < len(runs) else ""
                cells.append((_fmt(interval(values)) if values else "never") + reached if runs else "-")
            columns.append((f"{name} to {target:g}", cells))
    columns.append(("train s", [_fmt(over(row, lambda r: r.times.get("train_s")), digits=2) for row in rows]))
    columns.append(("status", [row.status for row in rows]))

    seeds = comparison.settings.get("seeds", 1)
    notes = [f"{INTERVAL_NOTE}.",
             f"mark, on {primary} against the best mean, paired by seed, Holm-corrected: "
             + "; ".join(f"{'n/a' if k == 'not enough seeds' else k}: {v}" for k, v in MARKS.items()) + ".",
             "lr: each variant's peak rate, the best mean over seeds of the validation split "
             "(training-side examples, not the eval split) among "
             + ", ".join(f"{x:g}" for x in _rates(comparison.settings.get("lr"))) + f"; seeds: {seeds} asked."]
    if target is not None:
        notes.append(f"to {target:g}: first point of the learning curve ({comparison.settings.get('curve_points')} "
                     f"evaluations on the eval split) where {primary} reached {target:g}; (k/n): seeds that did.")
    if comparison.search:
        notes += search_lines(comparison.search)
    return columns, notes


def search_lines(search: dict[str, Any]) -> list[str]:
    """What a successive-halving search did, one line per candidate."""
    lines = [f"successive halving: {search['spent']} of {search['budget']} steps spent over rungs "
             + ", ".join(f"{r['candidates']}×{r['steps']}" for r in search["rungs"])
             + f"; ranked by {search['metric']}; winner {search['winner']['variant']} at lr "
               f"{search['winner']['lr']:g}."]
    for c in search["candidates"]:
        val = "-" if c["val"] is None else f"{c['val']:.3g}"
        lines.append(f"  {c['variant']} lr {c['lr']:g}: {c['steps']} steps, last val {val}; {c['reason']}")
    return lines


def _rates(lr: Any) -> list[float]:
    if lr is None:
        return []
    return [float(x) for x in lr] if isinstance(lr, (list, tuple)) else [float(lr)]



def _plain(value: Optional[float], scale: float, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value * scale:.{digits}f}"
