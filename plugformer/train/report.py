"""What rank 0 shows and writes while training: a progress bar, ``metrics.jsonl`` and ``loss.png``.

Other ranks get a `Reporter` that does nothing, so the loop has no rank checks of its own.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional

__all__ = ["Reporter", "read_metrics", "plot_losses"]

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "loss.png"


def read_metrics(out: Path) -> list[dict[str, Any]]:
    """The records of ``DIR/metrics.jsonl`` in order (empty when there is none)."""
    path = Path(out) / METRICS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_losses(records: list[dict[str, Any]], path: Path, *, title: str = "") -> Optional[Path]:
    """Training loss against step, written to ``path`` with matplotlib's Agg canvas (no
    display, no pyplot state). Returns None when matplotlib is not installed."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    figure = Figure(figsize=(6, 4), layout="tight")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.plot([r["step"] for r in records], [r["loss"] for r in records], linewidth=1.2)
    axes.set_xlabel("step")
    axes.set_ylabel("training loss")
    axes.set_yscale("log")
    axes.grid(True, alpha=0.3)
    if title:
        axes.set_title(title, fontsize=9)
    figure.savefig(path, dpi=120)
    return Path(path)


class Reporter:
    """Rank 0's outputs for one run.

    Args:
        out: the run's folder.
        enabled: False on every rank but 0: then nothing is shown or written.
        progress: show the progress bar (on stderr).
        total: the step the run ends at.
        start: the step it starts from (a resumed run's checkpoint); ``metrics.jsonl`` keeps the
            records up to it and drops any written after it by the interrupted run.
        title: what the plot and the bar say the run is.
    """

    def __init__(self, out: Path, *, enabled: bool, progress: bool, total: int, start: int = 0,
                 title: str = "") -> None:
        self.out = Path(out)
        self.enabled = enabled
        self.total = total
        self.start = start
        self.title = title
        self._bar: Any = None
        self._task: Any = None
        self._progress = progress and enabled
        if enabled:
            kept = [r for r in read_metrics(self.out) if r["step"] <= start]
            (self.out / METRICS_FILE).write_text("".join(json.dumps(r) + "\n" for r in kept))

    def __enter__(self) -> "Reporter":
        if self._progress:
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)

            self._bar = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[speed]} tok/s"),
                TimeElapsedColumn(), TimeRemainingColumn(), console=Console(stderr=True),
            )
            self._bar.start()
            self._task = self._bar.add_task("train", total=self.total, completed=self.start,
                                            loss="-", speed="-")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def log(self, record: dict[str, Any]) -> None:
        """One step's record (``step``, ``loss``, ``lr``, ``tokens_per_s``, ...): appended to
        ``metrics.jsonl`` and shown on the bar."""
        if not self.enabled:
            return
        with open(self.out / METRICS_FILE, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self._bar is not None:
            self._bar.update(self._task, completed=record["step"], loss=f"{record['loss']:.4f}",
                             speed=f"{record['tokens_per_s']:,.0f}")

    def say(self, text: str) -> None:
        """A line on stderr (above the bar while it runs)."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.console.print(text, markup=False, highlight=False)
        else:
            print(text, file=sys.stderr, flush=True)

    def plot(self) -> Optional[Path]:
        """``loss.png`` of every record so far (resumed runs included)."""
        if not self.enabled:
            return None
        records = read_metrics(self.out)
        return plot_losses(records, self.out / PLOT_FILE, title=self.title) if records else None
