"""Progress of a comparison where people look: a bar per run in a terminal or Jupyter, plain
periodic lines through ``logging.getLogger("plugformer")`` elsewhere (CI, ``nohup``, SLURM logs).

`Progress` is the event `plugformer.compare.compare` hands to its ``progress`` callback;
`Bars` and `LogLines` are the two built-in callbacks, and `reporter` picks one for stderr.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, Callable, Optional, Union

import attrs

__all__ = ["Progress", "Bars", "LogLines", "reporter"]

_log = logging.getLogger("plugformer")


@attrs.frozen
class Progress:
    """What a comparison is doing, handed to the ``progress`` callback of `compare`.

    Attributes:
        variant: index of the variant (0-based).
        variants: number of variants.
        label: the variant's label (how it differs from the others).
        stage: ``"measure"`` (costs), ``"train"``, ``"eval"``, ``"done"``, ``"failed"`` or
            ``"skipped"`` (a run already on disk, read back by ``resume``).
        step, steps: training steps done and planned in this run.
        loss: the latest training loss, or None.
        message: the failure reason for ``"failed"``, otherwise None.
        run, runs: index of the run (0-based) among those planned so far, and their number
            (a search plans rung by rung, so ``runs`` grows). -1 and 0 while measuring.
        seed, lr: the run's seed and peak learning rate (None while measuring).
    """

    variant: int
    variants: int
    label: str
    stage: str
    step: int = 0
    steps: int = 0
    loss: Optional[float] = None
    message: Optional[str] = None
    run: int = -1
    runs: int = 0
    seed: Optional[int] = None
    lr: Optional[float] = None

    @property
    def title(self) -> str:
        """The run as one line: ``attn=dense seed 1 lr 0.003``."""
        if self.seed is None:
            return self.label
        return f"{self.label} seed {self.seed} lr {self.lr:g}"


class Bars:
    """One rich progress bar per run, on stderr (a terminal or a Jupyter output)."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
        from rich.progress import Progress as RichProgress

        self.progress = RichProgress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(),
            console=Console(stderr=True),
        )
        self.tasks: dict[tuple[int, int], Any] = {}

    def __enter__(self) -> "Bars":
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def __call__(self, event: Progress) -> None:
        key = (event.run, event.variant if event.run < 0 else -1)
        if key not in self.tasks:
            self.tasks[key] = self.progress.add_task(event.title, total=event.steps or None,
                                                     loss="-", start=False)
        task = self.tasks[key]
        name = event.title
        if event.stage == "measure":
            self.progress.update(task, description=f"{name} [dim](measuring)")
        elif event.stage == "train":
            if event.step == 1:
                self.progress.start_task(task)
            self.progress.update(task, completed=event.step, description=name,
                                 loss=f"{event.loss:.4f}" if event.loss is not None else "-")
        elif event.stage == "eval":
            self.progress.update(task, description=f"{name} [dim](evaluating)")
        elif event.stage in ("done", "skipped"):
            note = "[green]done" if event.stage == "done" else "[dim]on disk"
            self.progress.update(task, completed=event.steps, description=f"{name} {note}")
            self.progress.stop_task(task)
        elif event.stage == "failed":
            self.progress.update(task, description=f"{name} [red]failed: {event.message}")
            self.progress.stop_task(task)


class LogLines:
    """Plain lines through ``logging.getLogger("plugformer")``: the start and end of every run,
    and its step and loss at most every ``every`` seconds.

    When nothing is configured to handle the logger's INFO messages, a stderr handler is added
    for the duration of the ``with`` block (and removed after it), so the lines show up.

    Args:
        every: seconds between two lines about one run's training. Default: 30.
    """

    def __init__(self, every: float = 30.0) -> None:
        self.every = float(every)
        self.last = 0.0
        self.handler: Optional[logging.Handler] = None
        self.level: Optional[int] = None

    def __enter__(self) -> "LogLines":
        if not _log.hasHandlers() or _log.getEffectiveLevel() > logging.INFO:
            self.handler = logging.StreamHandler(sys.stderr)
            self.handler.setFormatter(logging.Formatter("%(asctime)s plugformer: %(message)s", "%H:%M:%S"))
            self.level = _log.level
            _log.addHandler(self.handler)
            _log.setLevel(logging.INFO)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.handler is not None:
            _log.removeHandler(self.handler)
            _log.setLevel(self.level or logging.NOTSET)
            self.handler = None

    def __call__(self, event: Progress) -> None:
        where = f"run {event.run + 1}/{event.runs}" if event.run >= 0 else "measuring"
        now = time.monotonic()
        if event.stage == "train":
            if event.step == 1 or now - self.last >= self.every or event.step == event.steps:
                self.last = now
                _log.info("%s %s: step %d/%d, loss %.4f", where, event.title, event.step,
                          event.steps, event.loss if event.loss is not None else float("nan"))
        elif event.stage == "done":
            _log.info("%s %s: done", where, event.title)
        elif event.stage == "skipped":
            _log.info("%s %s: already on disk, not run again", where, event.title)
        elif event.stage == "failed":
            _log.warning("%s %s: failed: %s", where, event.title, event.message)
        elif event.stage == "measure":
            _log.info("measuring %s", event.title)


def reporter(progress: Union[bool, None, Callable[[Progress], None]]) -> Any:
    """The callback `compare` feeds, as a context manager: ``progress`` itself when it is
    callable, none for False/None, and for True `Bars` when stderr is a terminal or Jupyter,
    `LogLines` otherwise."""
    if callable(progress):
        return _Plain(progress)
    if not progress:
        return _Plain(None)
    try:
        from rich.console import Console

        console = Console(stderr=True)
        interactive = console.is_terminal or console.is_jupyter
    except ImportError:
        interactive = False
    return Bars() if interactive else LogLines()


class _Plain:
    def __init__(self, callback: Optional[Callable[[Progress], None]]) -> None:
        self.callback = callback

    def __enter__(self) -> Optional[Callable[[Progress], None]]:
        return self.callback

    def __exit__(self, *exc: object) -> None:
        return None
