"""The figures of ``report.html``, drawn from run records with matplotlib (no pyplot, so the
user's backend and open figures are left alone) and returned as PNG bytes.

Each function takes the chosen runs grouped by variant (label -> records, one per seed), in the
table's order, so a variant keeps one colour across figures.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import Any, Optional

from plugformer.compare.cost import training_flops
from plugformer.compare.plotting import smooth
from plugformer.compare.stats import interval
from plugformer.compare.store import RunRecord

__all__ = ["loss_figure", "cost_figure", "length_figure", "lengths_of", "png"]

Groups = Mapping[str, Sequence[RunRecord]]


def png(figure: Any, dpi: int = 100) -> bytes:
    """``figure`` as PNG bytes."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def _colours() -> list[str]:
    import matplotlib

    return matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]


def _figure(panels: int, width: float = 6.0) -> tuple[Any, list[Any]]:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width * panels, 4.2), layout="tight")
    axes = figure.subplots(1, panels)
    return figure, list(axes) if panels > 1 else [axes]


def loss_figure(groups: Groups) -> bytes:
    """Training loss (smoothed, log scale) against step: one line per seed, one colour per
    variant."""
    figure, (ax,) = _figure(1, width=9.0)
    colours = _colours()
    for index, (label, records) in enumerate(groups.items()):
        for n, record in enumerate(records):
            losses = [v for v in record.losses if isinstance(v, (int, float)) and math.isfinite(v) and v > 0]
            if losses:
                ax.plot(range(1, len(losses) + 1), smooth(losses), color=colours[index % len(colours)],
                        linewidth=1.0, alpha=0.8, label=label if n == 0 else None)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (smoothed)")
    ax.set_title("loss curves (one line per seed)")
    if ax.has_data():
        ax.legend(fontsize=7)
    return png(figure)


def _cost_points(record: RunRecord, primary: str) -> list[tuple[Optional[float], Optional[float], float]]:
    """(seconds, FLOPs, quality) along the run's curve, ending at its final scores."""
    points = [(p.get("seconds"), p.get("flops"), float(p[primary])) for p in record.curve
              if p.get(primary) is not None and math.isfinite(float(p[primary]))]
    final = record.metrics.get(primary)
    if final is not None and math.isfinite(final):
        seconds = record.times.get("train_s")
        flops = training_flops(record.steps_done, record.info.get("flops_fwd_bwd"))
        points.append((seconds, flops, float(final)))
    return points


def cost_figure(groups: Groups, primary: str) -> bytes:
    """Quality against wall-clock training seconds (left) and against training FLOPs (right):
    each seed's curve, ending at its final score."""
    figure, axes = _figure(2)
    colours = _colours()
    for index, (label, records) in enumerate(groups.items()):
        colour = colours[index % len(colours)]
        for n, record in enumerate(records):
            points = _cost_points(record, primary)
            for ax, column in zip(axes, (0, 1)):
                xy = [(p[column], p[2]) for p in points if p[column] is not None]
                if xy:
                    ax.plot(*zip(*xy), marker="o", markersize=3, linewidth=1.0, color=colour,
                            alpha=0.8, label=label if n == 0 else None)
    for ax, unit in zip(axes, ("training seconds (wall clock)", "training FLOPs")):
        ax.set_xlabel(unit)
        ax.set_ylabel(primary)
        ax.grid(alpha=0.3)
        if ax.has_data():
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "not recorded", ha="center", va="center", transform=ax.transAxes)
    if axes[1].has_data():
        axes[1].set_xscale("log")
    axes[0].set_title("quality against time")
    axes[1].set_title("quality against compute")
    return png(figure)


def lengths_of(groups: Groups, metric: str) -> list[int]:
    """The eval lengths at which ``metric`` (the name before ``@``) was recorded, ascending."""
    lengths = set()
    for records in groups.values():
        for record in records:
            for key in record.metrics:
                name, _, length = key.partition("@")
                if name == metric and length.isdigit():
                    lengths.add(int(length))
    return sorted(lengths)


def length_figure(groups: Groups, metric: str) -> bytes:
    """``metric`` against eval length: the mean over seeds with its 95% interval as error bars
    (none with one seed)."""
    figure, (ax,) = _figure(1, width=8.0)
    colours = _colours()
    lengths = lengths_of(groups, metric)
    for index, (label, records) in enumerate(groups.items()):
        xs, ys, errors = [], [], []
        for length in lengths:
            summary = interval([r.metrics.get(f"{metric}@{length}") for r in records])
            if summary.n:
                xs.append(length)
                ys.append(summary.mean)
                errors.append(summary.half_width or 0.0)
        if xs:
            ax.errorbar(xs, ys, yerr=errors, marker="o", capsize=3, linewidth=1.2,
                        color=colours[index % len(colours)], label=label)
    ax.set_xscale("log", base=2)
    ax.set_xticks(lengths, [str(n) for n in lengths])
    ax.minorticks_off()
    ax.set_xlabel("evaluated length")
    ax.set_ylabel(f"{metric} (mean over seeds, 95% interval)")
    ax.set_title("quality against eval length")
    ax.grid(alpha=0.3)
    if ax.has_data():
        ax.legend(fontsize=7)
    return png(figure)
