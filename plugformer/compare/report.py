"""``report.html``: one self-contained page that a browser shows without a network.

The summary table (sortable by clicking a header), every run, loss curves, quality against
seconds and against FLOPs, quality against eval length, a run card per variant and the route
maps of BRA variants. Figures are PNGs inlined as ``data:`` URIs; the only script is a few inline
lines that sort tables; no stylesheet, font or image is fetched. All text is escaped.

    write_report(RunStore(out).read(), out / "report.html", target=0.99)
    write_report(comparison, out)                      # a Comparison works too
"""

from __future__ import annotations

import base64
import html
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

from plugformer.compare.cost import cost_to_reach
from plugformer.compare.report_figures import cost_figure, length_figure, lengths_of, loss_figure
from plugformer.compare.stats import INTERVAL_NOTE, MARKS, compare_to_best, higher_is_better, interval
from plugformer.compare.store import RunRecord
from plugformer.tasks.metrics import is_fraction, scores_of

__all__ = ["write_report", "records_from_comparison", "choose_runs"]


if TYPE_CHECKING:
    from plugformer.compare.result import Comparison

_log = logging.getLogger("plugformer")
RouteMap = Union[bytes, str, os.PathLike]

_STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px}
table{border-collapse:collapse;margin:1em 0;font-size:13px}th,td{border:1px solid #ccc;padding:3px 6px}
th{background:#eee;cursor:pointer}td.n{text-align:right}.worse{color:#a00}.best{font-weight:bold}
img{max-width:100%}.card{border:1px solid #ccc;padding:0.5em 1em;margin:0.5em 0}
code{word-break:break-all}.note{color:#555;font-size:12px}"""

_SORT = """document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("th").forEach(function (th, col) {
    th.addEventListener("click", function () {
      var body = table.tBodies[0], rows = Array.from(body.rows), up = th.dataset.order !== "up";
      rows.sort(function (a, b) {
        var x = a.cells[col].dataset.v || a.cells[col].textContent,
            y = b.cells[col].dataset.v || b.cells[col].textContent,
            nx = parseFloat(x), ny = parseFloat(y),
            c = isNaN(nx) || isNaN(ny) ? x.localeCompare(y) : nx - ny;
        return up ? c : -c;
      });
      th.dataset.order = up ? "up" : "down";
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});"""


def records_from_comparison(comparison: Comparison) -> list[RunRecord]:
    """One `RunRecord` per row of a single-seed `Comparison` (scores as ``name@length``)."""
    settings = comparison.settings
    length = comparison.lengths[0] if comparison.lengths else None
    primary = f"{comparison.primary_metric}@{length}" if length is not None else comparison.primary_metric
    info_keys = ("device", "torch", "plugformer", "git_commit", "backend")
    records = []
    for row in comparison.rows:
        metrics = {f"{name}@{e.length}": value for e in row.evals for name, value in scores_of(e).items()}
        if row.final_loss is not None:
            metrics["final_loss"] = row.final_loss
        times = {k: v for k, v in (("train_s", row.train_s), ("eval_s", row.eval_s)) if v is not None}
        info = {k: settings[k] for k in info_keys if k in settings}
        info.update(params=row.params, flops_fwd_bwd=row.flops_fwd_bwd, written=row.written)
        records.append(RunRecord(
            variant=row.label, spec=row.spec, task=comparison.task, seed=settings.get("seed", 0),
            lr=settings.get("lr", math.nan), steps=settings.get("steps", row.steps_done),
            status=row.status, error=row.error, primary=primary, steps_done=row.steps_done,
            metrics=metrics, losses=list(row.losses), times=times, info=info))
    return records


def choose_runs(records: Sequence[RunRecord]) -> tuple[dict[str, list[RunRecord]], dict[str, str]]:
    """The runs the summary shows: per variant, its best learning rate, one run per seed.

    Per (variant, rate, seed) the run with the most steps is kept (a search's last rung). The
    rate is the one with the best mean over seeds of ``val_<primary>`` when every rate of the
    variant that finished a run recorded it (a rate whose runs all failed is never chosen),
    else of the primary metric itself (and the note says so). A tie (every rate at 0% exact
    match, say) goes to the lower mean loss on the same split. Under a search, a rate that was
    given more steps (a survivor) comes before one stopped earlier.

    Returns:
        (variant -> chosen runs in seed order, variant -> how its rate was chosen).
    """
    latest: dict[tuple[str, str, int], RunRecord] = {}
    for record in records:
        key = (record.variant, float(record.lr).hex(), int(record.seed))
        if key not in latest or record.steps_done >= latest[key].steps_done:
            latest[key] = record
    by_rate: dict[str, dict[str, list[RunRecord]]] = {}
    for (variant, lr, _), record in latest.items():
        by_rate.setdefault(variant, {}).setdefault(lr, []).append(record)
    chosen, how = {}, {}
    for variant, rates in by_rate.items():
        primary = next(r.primary for runs in rates.values() for r in runs) or ""
        validation = f"val_{primary}"
        on_val = all(any(validation in r.metrics for r in runs) for runs in rates.values()
                     if any(r.status == "ok" for r in runs))  # a rate that only failed has none
        metric = validation if on_val else primary
        sign = 1.0 if higher_is_better(primary) else -1.0

        loss = f"{'val_' if on_val else ''}loss@{primary.partition('@')[2]}"

        def mean_of(lr: str, key: str, sign: float) -> float:
            mean = interval([r.metrics.get(key) for r in rates[lr] if r.status == "ok"]).mean
            return -math.inf if math.isnan(mean) else sign * mean

        def score(lr: str) -> tuple[int, float, float]:
            return max(r.steps for r in rates[lr]), mean_of(lr, metric, sign), mean_of(lr, loss, -1.0)

        best = max(rates, key=score)
        chosen[variant] = sorted(rates[best], key=lambda r: r.seed)
        how[variant] = ("only rate" if len(rates) == 1 else
                        f"best of {len(rates)} on {metric}" + ("" if on_val else " (no validation split recorded)"))
    return chosen, how


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _table(headers: Sequence[str], rows: Sequence[Sequence[tuple[str, Any]]], css: str = "sortable") -> str:
    """Rows of (shown text, sort value or None) cells."""
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = []
        for text, value in row:
            sort = "" if value is None else f' data-v="{_e(value)}"'
            numeric = ' class="n"' if value is not None else ""
            cells.append(f"<td{numeric}{sort}>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f'<table class="{css}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _number(value: Optional[float], digits: int = 4) -> tuple[str, Optional[float]]:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-", None
    return _e(f"{value:.{digits}g}"), value


def _summary(chosen: dict[str, list[RunRecord]], how: dict[str, str], primary: str,
             target: Optional[float]) -> str:
    metrics = sorted({k for runs in chosen.values() for r in runs for k in r.metrics},
                     key=lambda k: (k != primary, k.startswith("val_"), k))
    ok = {v: [r for r in runs if r.status == "ok"] for v, runs in chosen.items()}
    verdicts = compare_to_best({v: {r.seed: r.metrics.get(primary) for r in runs} for v, runs in ok.items()},
                               higher_is_better=higher_is_better(primary))
    headers = ["variant", "mark", "lr", "seeds ok"] + metrics + ["train s"]
    if target is not None:
        headers += [f"steps to {target:g}", f"seconds to {target:g}", f"FLOPs to {target:g}"]
    rows = []
    for variant, runs in chosen.items():
        verdict = verdicts[variant]
        mark = f'<span class="{_e(verdict.mark.replace(" ", "-"))}">{_e(verdict.mark)}</span>'
        if verdict.p_value is not None and verdict.mark != "best":
            mark += f" (p={verdict.p_value:.2g})"
        row = [(_e(variant), None), (mark, None), _number(runs[0].lr, 3),
               (_e(f"{len(ok[variant])}/{len(runs)}"), len(ok[variant]))]
        for metric in metrics + ["train_s"]:
            values = [r.times.get("train_s") if metric == "train_s" else r.metrics.get(metric)
                      for r in ok[variant]]
            summary = interval(values)
            name = metric.partition("@")[0].removeprefix("val_")
            shown = (summary.format(scale=100, digits=1, unit="%") if is_fraction(name)
                     else summary.format(digits=3, significant=True))
            row.append((_e(shown), summary.mean if summary.n else None))
        if target is not None:
            reached = [cost_to_reach(r.curve, target, metric=primary) for r in ok[variant]]
            hits = [x for x in reached if x is not None]
            for attribute in ("step", "seconds", "flops"):
                values = [getattr(x, attribute) for x in hits if getattr(x, attribute) is not None]
                summary = interval(values)
                text = f"{summary.format(digits=3, significant=True)} ({len(hits)}/{len(reached)} reached)" if values else \
                    f"- ({len(hits)}/{len(reached)} reached)"
                row.append((_e(text), summary.mean if values else None))
        rows.append(row)
    notes = [f"primary metric: {primary}; marks against the best: " +
             "; ".join(f"{k}: {v}" for k, v in MARKS.items()) + ".", INTERVAL_NOTE + ".",
             "learning rate per variant: " + "; ".join(f"{v}: {h}" for v, h in how.items()) + "."]
    if target is not None:
        notes.append(f"to {target:g}: first evaluation during training at which {primary} "
                     "reached the target, over the seeds that reached it.")
    return _table(headers, rows) + "".join(f'<p class="note">{_e(n)}</p>' for n in notes)


def _all_runs(records: Sequence[RunRecord]) -> str:
    headers = ["variant", "seed", "lr", "steps", "steps done", "status", "primary", "value",
               "train s", "why stopped"]
    rows = [[(_e(r.variant), None), (_e(r.seed), r.seed), _number(r.lr, 3), (_e(r.steps), r.steps),
             (_e(r.steps_done), r.steps_done), (_e(r.status), None), (_e(r.primary or "-"), None),
             _number(r.metrics.get(r.primary or "")), _number(r.times.get("train_s"), 3),
             (_e(r.error or ""), None)] for r in records]
    return _table(headers, rows)


def _card(variant: str, runs: Sequence[RunRecord]) -> str:
    first = runs[0]
    wall = [r.times.get("wall_s", r.times.get("train_s", 0.0) + r.times.get("eval_s", 0.0)) for r in runs]

    def seen(key: str) -> str:
        return ", ".join(sorted({str(r.info.get(key)) for r in runs if r.info.get(key)})) or "not recorded"

    fields = [("canonical spec", f"<code>{_e(first.spec)}</code>"), ("task", _e(first.task)),
              ("seeds", _e(", ".join(str(r.seed) for r in runs))), ("learning rate", _e(f"{first.lr:g}")),
              ("steps", _e(", ".join(sorted({str(r.steps_done) for r in runs})))),
              ("torch", _e(seen("torch"))), ("plugformer", _e(seen("plugformer"))),
              ("git commit", _e(seen("git_commit"))), ("device", _e(seen("device"))),
              ("attention backend used", _e(seen("backend"))),
              ("wall time", _e(f"{sum(wall):.1f} s over {len(runs)} run(s)"))]
    items = "".join(f"<dt>{name}</dt><dd>{value}</dd>" for name, value in fields)
    return f'<div class="card"><h3>{_e(variant)}</h3><dl>{items}</dl></div>'


def _img(data: bytes, alt: str) -> str:
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode("ascii")}">'


def _route_png(source: RouteMap) -> bytes:
    return bytes(source) if isinstance(source, (bytes, bytearray)) else Path(source).read_bytes()


def _saved_figures(chosen: Mapping[str, Sequence[RunRecord]], root: Path) -> dict[str, Path]:
    """The route map each variant's first run saved (``info["figures"]``, relative to ``root``,
    the comparison's folder), where the file is still there."""
    found = {}
    for variant, runs in chosen.items():
        for run in runs:
            figure = (run.info.get("figures") or {}).get("route map")
            if figure and (root / figure).is_file():
                found[variant] = root / figure
                break
    return found


def write_report(
    source: Union[Comparison, Sequence[RunRecord]],
    path: Union[str, os.PathLike],
    *,
    route_maps: Optional[Mapping[str, RouteMap]] = None,
    target: Optional[float] = None,
    title: Optional[str] = None,
) -> Path:
    """Write ``report.html`` from the runs of a comparison (or a `Comparison`).

    Args:
        source: run records (``RunStore(out).read()``; every seed, rate and rung) or a
            `Comparison` (one seed, converted by `records_from_comparison`).
        path: the file to write, or a folder to write ``report.html`` in.
        route_maps: variant label -> route-map PNG (bytes or a path); default: those the runs
            saved (``figures/`` beside the report, from the ``plugformer_model_figures`` hook),
            e.g. written by
            `plugformer.plugins.bra.plot_routes`; each is shown under its run card.
        target: adds steps / seconds / FLOPs to reach this value of the primary metric.
        title: the page title. Default: ``plugformer comparison: <task>``.

    Returns:
        The path written.

    Raises:
        ValueError: if there are no runs, or a route map names no variant of the runs.
        ImportError: without matplotlib (``pip install 'plugformer[plot]'``).
    """
    records = records_from_comparison(source) if hasattr(source, "rows") else list(source)
    if not records:
        raise ValueError("no runs to report: the comparison finished no run")
    chosen, how = choose_runs(records)
    path = Path(path)
    if path.is_dir():
        path = path / "report.html"
    if route_maps is None:
        route_maps = _saved_figures(chosen, path.parent)
    unknown = sorted(set(route_maps or {}) - set(chosen))
    if unknown:
        raise ValueError(f"route maps given for {unknown}, which are not variants of these runs "
                         f"(variants: {sorted(chosen)})")
    primary = next((r.primary for r in records if r.primary), "")
    tasks = sorted({r.task for r in records})
    title = title or f"plugformer comparison: {', '.join(tasks)}"
    sections = [f"<h1>{_e(title)}</h1>",
                f"<p>{len(records)} runs, {len(chosen)} variants, task {_e(', '.join(tasks))}.</p>",
                "<h2>Summary (click a header to sort)</h2>", _summary(chosen, how, primary, target),
                "<h2>Loss curves</h2>", _img(loss_figure(chosen), "loss curves"),
                "<h2>Cost against quality</h2>", _img(cost_figure(chosen, primary), "cost against quality")]
    metric = primary.partition("@")[0]
    if len(lengths_of(chosen, metric)) > 1:
        sections += ["<h2>Quality against eval length</h2>",
                     _img(length_figure(chosen, metric), "quality against eval length")]
    sections.append("<h2>Run cards</h2>")
    for variant, runs in chosen.items():
        sections.append(_card(variant, runs))
        if route_maps and variant in route_maps:
            sections.append(_img(_route_png(route_maps[variant]), f"route map of {variant}"))
    sections += ["<h2>Every run</h2>", _all_runs(records)]
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
            f"<style>{_STYLE}</style></head><body>\n" + "\n".join(sections) +
            f"\n<script>{_SORT}</script>\n</body></html>\n")
    path.write_text(page, encoding="utf-8")
    _log.info("report written to %s", path)
    return path
