"""The result of a comparison: one row per variant, and the ways to read it.

`Comparison` renders a text or markdown table, writes CSV and JSON (and reads its JSON back),
plots the loss curves beside a cost-versus-accuracy scatter, and saves all of these to a folder.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Any, Optional, Union

import attrs

from plugformer.compare.store import RUN_FORMAT, RunRecord
from plugformer.compare.units import si_count
from plugformer.tasks.metrics import SCORES, EvalResult, is_fraction, scores_of, short_name

__all__ = ["EvalResult", "VariantResult", "Comparison", "FORMAT"]

FORMAT = "plugformer.comparison/1"
_METRIC_LEGEND = {"exact_match": "EM: exact match", "accuracy": "acc: answer accuracy",
                  "bits_per_byte": "bpb: bits per byte (lower is better)"}
_MIB = 2**20


@attrs.define
class VariantResult:
    """Everything measured for one variant. Costs are None where they could not be measured.

    Attributes:
        index: position of the variant in the comparison (0-based).
        label: how this variant differs from the others, e.g. ``attn=dense, pe=learned``.
        spec: the canonical resolved spec of the model built.
        written: the spec as given (after expanding choices), shorter than ``spec``.
        differs: the model-level arguments whose values vary across variants, as text.
        kind: ``encdec`` or ``lm``.
        status: ``ok``, or ``failed`` with the reason in ``error``.
        error: why the variant stopped (``non-finite loss at step 12``, an exception), or None.
        params: trainable and frozen parameters, counted once when shared.
        flops_fwd, flops_fwd_bwd: FLOPs of one forward / forward+backward on a training batch.
        time_fwd_s, time_fwd_bwd_s: median seconds of one forward (eval, no grad) / one
            forward+backward (train) on a training batch, timed round-robin across variants.
        mem_fwd_bytes, mem_fwd_bwd_bytes: peak tensor memory of those calls (see
            :mod:`plugformer.compare.timing` for the method).
        steps_done: training steps completed.
        train_s, eval_s: wall-clock seconds of training and of evaluation.
        losses: training loss of every step.
        evals: held-out scores per length, the training length first.
        lr: the peak learning rate the row is reported at (chosen on the validation split when
            the comparison had a grid), or None before any run finished.
        lr_choice: how it was chosen, e.g. ``best of 3 on val_exact_match@16``.
        seeds: the seeds of the runs the row summarises; the scalar fields above are the
            first seed's, the table of a multi-seed comparison gives means and intervals.
        diagnostics: what plugins measured inside the trained model (the
            ``plugformer_model_diagnostics`` hook: BRA's ``route_recall``, ``routing_entropy``,
            ``region_load``), by name; empty when no plugin had anything to say.
    """

    index: int
    label: str
    spec: str
    written: str
    kind: str
    differs: dict[str, str] = attrs.field(factory=dict)
    status: str = "ok"
    error: Optional[str] = None
    params: Optional[int] = None
    flops_fwd: Optional[int] = None
    flops_fwd_bwd: Optional[int] = None
    time_fwd_s: Optional[float] = None
    time_fwd_bwd_s: Optional[float] = None
    mem_fwd_bytes: Optional[int] = None
    mem_fwd_bwd_bytes: Optional[int] = None
    steps_done: int = 0
    train_s: Optional[float] = None
    eval_s: Optional[float] = None
    losses: list[float] = attrs.field(factory=list)
    evals: list[EvalResult] = attrs.field(factory=list)
    lr: Optional[float] = None
    lr_choice: Optional[str] = None
    seeds: list[int] = attrs.field(factory=list)
    diagnostics: dict[str, float] = attrs.field(factory=dict)

    @property
    def ok(self) -> bool:
        """Whether the variant trained and was evaluated without failing."""
        return self.status == "ok"

    @property
    def final_loss(self) -> Optional[float]:
        """Mean training loss over the last 5% of the steps (at least one step)."""
        if not self.losses:
            return None
        tail = self.losses[-max(1, len(self.losses) // 20):]
        return sum(tail) / len(tail)

    def eval_at(self, length: int) -> Optional[EvalResult]:
        """The held-out scores at ``length``, or None if it was not evaluated."""
        return next((e for e in self.evals if e.length == length), None)


@attrs.define
class Comparison:
    """Variants compared on one task, with the settings that produced them.

    Attributes:
        rows: one `VariantResult` per variant, in the order given.
        task: the task as a spec, e.g. ``copy(length=16, vocab=64)``.
        primary_metric: ``exact_match`` or ``accuracy``: the score the table leads with.
        lengths: the evaluated lengths, the training length first.
        settings: steps, batch, lr (a rate or the grid), seed, seeds, budget, target, device,
            timing repeats, memory method, versions, wall-clock seconds of the whole comparison.
        runs: every run (`plugformer.compare.store.RunRecord`): each seed, rate and rung.
        search: what a budgeted search did (`plugformer.compare.search.successive_halving`),
            or {} without one.
    """

    rows: list[VariantResult]
    task: str
    primary_metric: str = "exact_match"
    lengths: list[int] = attrs.field(factory=list)
    settings: dict[str, Any] = attrs.field(factory=dict)
    runs: list[RunRecord] = attrs.field(factory=list)
    search: dict[str, Any] = attrs.field(factory=dict)

    @property
    def detailed(self) -> bool:
        """Whether the table is the seed-aware one: several seeds or rates, a budget or a target."""
        lr = self.settings.get("lr")
        return bool(self.runs) and (self.settings.get("seeds", 1) > 1 or isinstance(lr, list)
                                    or bool(self.search) or self.settings.get("target") is not None)

    # ------------------------------------------------------------------ table

    def _columns(self) -> list[tuple[str, list[str]]]:
        metric = short_name(self.primary_metric)
        shown = _percent if is_fraction(self.primary_metric) else (lambda v: _number(v, 1, 4))
        columns: list[tuple[str, list[str]]] = [
            ("variant", [row.label for row in self.rows]),
            ("params", [si_count(row.params) for row in self.rows]),
            ("FLOPs fwd", [si_count(row.flops_fwd) for row in self.rows]),
            ("fwd ms", [_number(row.time_fwd_s, 1e3, 2) for row in self.rows]),
            ("fwd+bwd ms", [_number(row.time_fwd_bwd_s, 1e3, 2) for row in self.rows]),
            ("peak MiB", [_number(row.mem_fwd_bwd_bytes, 1 / _MIB, 1) for row in self.rows]),
            ("final loss", [_number(row.final_loss, 1, 4) for row in self.rows]),
        ]
        for length in self.lengths:
            values = []
            for row in self.rows:
                scores = row.eval_at(length)
                values.append(shown(getattr(scores, self.primary_metric) if scores else None))
            columns.append((f"{metric}@{length}", values))
        if self.primary_metric == "exact_match":  # token accuracy shows how far past it goes
            for length in self.lengths:
                values = [_percent(row.eval_at(length).accuracy) if row.eval_at(length) else "-"
                          for row in self.rows]
                columns.append((f"tok acc@{length}", values))
        for name in dict.fromkeys(name for row in self.rows for name in row.diagnostics):
            columns.append((name.replace("_", " "), [_number(row.diagnostics.get(name), 1, 3) for row in self.rows]))
        columns.append(("train s", [_number(row.train_s, 1, 1) for row in self.rows]))
        columns.append(("status", [row.status for row in self.rows]))
        return columns

    def table(self, fmt: str = "text") -> str:
        """The results as a table: ``fmt`` is ``"text"`` (aligned columns) or ``"markdown"``.

        Failed variants are listed under the table with their reasons.
        """
        if fmt not in ("text", "markdown"):
            raise ValueError(f"fmt must be 'text' or 'markdown', got {fmt!r}")
        if self.detailed:
            from plugformer.compare.summary import table_lines

            columns, footnotes = table_lines(self)
        else:
            columns, footnotes = self._columns(), []
        headers = [name for name, _ in columns]
        body = [list(cells) for cells in zip(*(values for _, values in columns))]
        if fmt == "markdown":
            lines = ["| " + " | ".join(headers) + " |",
                     "|" + "|".join("---" if i == 0 else "---:" for i in range(len(headers))) + "|"]
            lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in body]
        else:
            widths = [max(len(h), *(len(row[i]) for row in body)) if body else len(h)
                      for i, h in enumerate(headers)]
            def line(cells: list[str]) -> str:
                return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                                 for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
            lines = [line(headers), line(["-" * w for w in widths])] + [line(row) for row in body]
        header = f"task: {self.task}"
        if self.settings:
            keys = ("steps", "batch", "lr", "seed", "seeds", "budget", "device")
            shown = [k for k in keys if self.settings.get(k) is not None
                     and not (k == "seeds" and self.settings[k] == 1)]
            header += "; " + ", ".join(f"{k} {self.settings[k]}" for k in shown)
        notes = [f"- {row.label}: {row.error}" for row in self.rows if not row.ok]
        repeats = self.settings.get("timing_repeats")
        legend = ("FLOPs: matrix products of one forward on a training batch; ms: median of "
                  f"{repeats or 'several'} round-robin repeats; peak MiB: most tensor memory one "
                  "forward+backward holds beyond the weights; "
                  + _METRIC_LEGEND.get(self.primary_metric, self.primary_metric)
                  + " on held-out examples at each length")
        text = "\n".join([header, ""] + lines + ["", legend] + footnotes)
        if notes:
            text += "\n\nfailed:\n" + "\n".join(notes)
        return text + "\n"

    def __str__(self) -> str:
        return self.table()

    # ------------------------------------------------------------------ csv / json

    def to_csv(self, path: Union[str, os.PathLike, None] = None) -> str:
        """One line per variant with every scalar measured; written to ``path`` if given.

        Per-length scores are columns ``name@L`` for each name of `tasks.metrics.SCORES` (``loss``,
        ``accuracy``, ``exact_match``, ``perplexity``, ``bits_per_byte``; empty where the task has
        no such score); the loss curves are in the JSON only.
        """
        fields = ["index", "label", "spec", "kind", "status", "error", "params", "flops_fwd",
                  "flops_fwd_bwd", "time_fwd_s", "time_fwd_bwd_s", "mem_fwd_bytes",
                  "mem_fwd_bwd_bytes", "steps_done", "train_s", "eval_s", "final_loss"]
        for length in self.lengths:
            fields += [f"{name}@{length}" for name in SCORES]
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        for row in self.rows:
            record = {name: getattr(row, name) for name in fields if "@" not in name}
            for scores in row.evals:
                record.update({f"{name}@{scores.length}": value for name, value in scores_of(scores).items()})
            writer.writerow({k: "" if v is None else v for k, v in record.items() if k in fields})
        text = out.getvalue()
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text

    def to_dict(self) -> dict[str, Any]:
        """A plain dict of everything, for JSON."""
        return {"format": FORMAT, **attrs.asdict(self)}

    def to_json(self, path: Union[str, os.PathLike, None] = None) -> str:
        """Everything, loss curves included, as JSON; written to ``path`` if given.

        `Comparison.from_json` reads it back equal.
        """
        text = json.dumps(self.to_dict(), indent=1)
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text

    @classmethod
    def from_json(cls, source: Union[str, os.PathLike]) -> "Comparison":
        """Read a comparison written by `to_json`: ``source`` is its text or a path to it."""
        if isinstance(source, os.PathLike) or not str(source).lstrip().startswith("{"):
            source = Path(source).read_text(encoding="utf-8")
        data = json.loads(source)
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"not a plugformer comparison (expected format {FORMAT!r})")
        rows = [VariantResult(**{**row, "evals": [EvalResult(**e) for e in row["evals"]]})
                for row in data["rows"]]
        runs = [RunRecord.from_dict({"format": RUN_FORMAT, **run}) for run in data.get("runs", [])]
        return cls(rows=rows, task=data["task"], primary_metric=data["primary_metric"],
                   lengths=data["lengths"], settings=data["settings"], runs=runs,
                   search=data.get("search", {}))

    # ------------------------------------------------------------------ plot / save

    def plot(self, path: Union[str, os.PathLike]) -> Path:
        """Write a PNG: training loss curves, cost against accuracy and, when the task was
        evaluated at more than one length, accuracy against length.

        The cost is the median forward+backward time of a training batch; the accuracy is the
        primary metric at the training length. Needs matplotlib (``pip install plugformer[plot]``).
        """
        try:
            from plugformer.compare.plotting import draw

            figure = draw(self)
        except ImportError as err:
            raise ImportError("Comparison.plot needs matplotlib: pip install 'plugformer[plot]'") from err
        path = Path(path)
        figure.savefig(path, dpi=120)
        return path

    def save(self, directory: Union[str, os.PathLike]) -> dict[str, Path]:
        """Write ``table.md``, ``results.csv``, ``results.json``, ``comparison.png`` and, when
        the comparison has its runs, ``report.html`` into ``directory`` (created if needed);
        returns their paths by kind.

        The figures are skipped, with a warning, when matplotlib is not installed.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        paths = {"table": directory / "table.md", "csv": directory / "results.csv",
                 "json": directory / "results.json"}
        paths["table"].write_text(self.table("markdown"), encoding="utf-8")
        self.to_csv(paths["csv"])
        self.to_json(paths["json"])
        try:
            paths["plot"] = self.plot(directory / "comparison.png")
            if self.runs:
                from plugformer.compare.report import write_report
                from plugformer.compare.search import annotate

                paths["report"] = write_report(annotate(self.runs, self.search),
                                               directory / "report.html",
                                               target=self.settings.get("target"))
        except ImportError as err:
            import warnings
            warnings.warn(f"figures not written: {err}", stacklevel=2)
        return paths



def _number(value: Optional[float], scale: float, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value * scale:.{digits}f}"


def _percent(value: Optional[float]) -> str:
    return "-" if value is None or math.isnan(value) else f"{100 * value:.1f}%"
