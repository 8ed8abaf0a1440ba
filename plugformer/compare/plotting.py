"""The comparison figure: loss curves beside a cost-versus-accuracy scatter, and accuracy
against length when the task was evaluated at more than one length."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from plugformer.compare.result import Comparison


def smooth(values: list[float], weight: float = 0.9) -> list[float]:
    """Exponential moving average, bias-corrected so the curve starts at the first value."""
    out, average = [], 0.0
    for step, value in enumerate(values, start=1):
        average = weight * average + (1 - weight) * value
        out.append(average / (1 - weight**step))
    return out


def draw(comparison: "Comparison") -> Any:
    """A matplotlib ``Figure`` of ``comparison``, made without pyplot so that the user's backend
    and open figures are left alone."""
    import matplotlib
    from matplotlib.figure import Figure

    by_length = len(comparison.lengths) > 1
    figure = Figure(figsize=(18 if by_length else 12, 4.5), layout="tight")
    axes = figure.subplots(1, 3 if by_length else 2)
    curves, scatter = axes[:2]
    colours = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    metric = comparison.primary_metric.replace("_", " ")
    length = comparison.lengths[0] if comparison.lengths else None
    for row in comparison.rows:
        colour = colours[row.index % len(colours)]
        losses = [value for value in row.losses if value == value and value > 0]
        if losses:
            label = row.label if row.ok else f"{row.label} (failed)"
            curves.plot(range(1, len(losses) + 1), smooth(losses), color=colour, label=label,
                        linewidth=1.2)
        scores = row.eval_at(length) if length is not None else None
        if row.ok and scores is not None and row.time_fwd_bwd_s is not None:
            x, y = row.time_fwd_bwd_s * 1e3, 100 * getattr(scores, comparison.primary_metric)
            scatter.scatter([x], [y], color=colour, s=50, alpha=0.8, label=row.label)
        if by_length and row.ok:
            points = [(e.length, 100 * e.accuracy) for e in sorted(row.evals, key=lambda e: e.length)]
            axes[2].plot(*zip(*points), marker="o", color=colour, label=row.label, linewidth=1.2)
    curves.set_yscale("log")
    curves.set_xlabel("step")
    curves.set_ylabel("training loss (smoothed)")
    curves.set_title(f"{comparison.task}")
    if curves.has_data():
        curves.legend(fontsize=7)
    scatter.set_xlabel("forward+backward time per batch (ms)")
    scatter.set_ylabel(f"{metric} at length {length} (%)")
    scatter.set_title("cost vs accuracy (colours as on the left)")
    scatter.grid(alpha=0.3)
    if by_length:
        _draw_length_axis(axes[2], comparison)
    return figure


def _draw_length_axis(ax: Any, comparison: "Comparison") -> None:
    """Label the accuracy-versus-length panel; the training length is marked."""
    accuracy = "token accuracy" if comparison.primary_metric == "exact_match" else "answer accuracy"
    ax.set_xscale("log", base=2)
    ax.set_xticks(comparison.lengths, [str(n) for n in comparison.lengths])
    ax.minorticks_off()
    ax.axvline(comparison.lengths[0], color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("evaluated length (dotted: trained)")
    ax.set_ylabel(f"{accuracy} (%)")
    ax.set_ylim(0, 102)
    ax.set_title("train short, test long")
    ax.grid(alpha=0.3)
