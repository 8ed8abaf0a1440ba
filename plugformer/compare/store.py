"""Every finished run on disk as it ends: one JSON line per run in ``runs.jsonl``.

    store = RunStore(out_dir)
    todo = store.pending(plan)               # for --resume: the planned runs not yet on disk
    for run in todo:
        record = ...                         # train and evaluate
        store.append(record)                 # flushed and fsynced before it returns
    records = store.read()                   # every complete line; a torn last line is dropped

A run is keyed by its canonical spec, task, seed, learning rate and step budget (`run_key`), a
hash that is the same in every process and on every machine, so a resumed comparison finds the
runs an earlier process finished.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Optional, Union

import attrs

__all__ = ["RUN_FORMAT", "RunPlan", "RunRecord", "RunStore", "run_key", "git_commit", "environment"]

RUN_FORMAT = "plugformer.run/1"
_log = logging.getLogger("plugformer")


def run_key(*, spec: str, task: str, seed: int, lr: float, steps: int) -> str:
    """A stable key for one run: the first 16 hex digits of a SHA-256 over the canonical spec,
    the task spec, the seed, the learning rate (as the float it denotes: ``1e-3`` and ``0.001``
    are one rate) and the step budget."""
    text = json.dumps([spec, task, int(seed), float(lr).hex(), int(steps)])
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


@attrs.frozen
class RunPlan:
    """One run a comparison means to do.

    Attributes:
        spec: the variant's canonical resolved spec.
        task: the task as a spec, e.g. ``copy(length=16, vocab=64)``.
        seed: the seed of data order and initialisation.
        lr: the peak learning rate.
        steps: the optimiser steps the run is given (a successive-halving rung is its own plan).
    """

    spec: str
    task: str
    seed: int
    lr: float
    steps: int

    @property
    def key(self) -> str:
        """`run_key` of this plan."""
        return run_key(spec=self.spec, task=self.task, seed=self.seed, lr=self.lr, steps=self.steps)


@attrs.define
class RunRecord:
    """One finished run: what was run and everything measured.

    Attributes:
        variant: the variant's label in the comparison, e.g. ``attn=dense, pe=learned``.
        spec, task, seed, lr, steps: as in `RunPlan`.
        status: ``ok``, ``failed`` (reason in ``error``), or ``stopped`` (pruned by a search;
            reason in ``error``).
        error: why the run failed or stopped, or None.
        primary: the key in ``metrics`` the comparison ranks by, e.g. ``exact_match@16``.
        steps_done: optimiser steps completed.
        metrics: final held-out scores, ``name@length`` (``loss@16``, ``accuracy@16``,
            ``exact_match@16``) and plain names (``final_loss``, ``val_exact_match@16``).
        losses: training loss of every step.
        curve: points taken during training (see `plugformer.compare.cost`): ``step``,
            ``seconds``, ``flops`` and metrics.
        times: seconds, e.g. ``train_s``, ``eval_s``, ``wall_s``.
        info: the rest of the run card: ``environment()`` (versions, git commit), ``device``,
            ``backend`` (the attention kernel actually used), ``params``, ``flops_fwd_bwd``.
    """

    variant: str
    spec: str
    task: str
    seed: int
    lr: float
    steps: int
    status: str = "ok"
    error: Optional[str] = None
    primary: Optional[str] = None
    steps_done: int = 0
    metrics: dict[str, float] = attrs.field(factory=dict)
    losses: list[float] = attrs.field(factory=list)
    curve: list[dict[str, Any]] = attrs.field(factory=list)
    times: dict[str, float] = attrs.field(factory=dict)
    info: dict[str, Any] = attrs.field(factory=dict)

    @property
    def plan(self) -> RunPlan:
        """The `RunPlan` this record fulfils."""
        return RunPlan(spec=self.spec, task=self.task, seed=self.seed, lr=self.lr, steps=self.steps)

    @property
    def key(self) -> str:
        """`run_key` of this run."""
        return self.plan.key

    def to_dict(self) -> dict[str, Any]:
        """A plain dict for JSON, with the format tag."""
        return {"format": RUN_FORMAT, **attrs.asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunRecord":
        """Read what `to_dict` wrote.

        Raises:
            ValueError: if ``data`` is not a run record of this format, or lacks a field.
        """
        if not isinstance(data, dict) or data.get("format") != RUN_FORMAT:
            raise ValueError(f"not a plugformer run record (expected format {RUN_FORMAT!r})")
        names = {field.name for field in attrs.fields(cls)}
        try:
            return cls(**{k: v for k, v in data.items() if k in names})
        except TypeError as err:
            raise ValueError(f"run record incomplete: {err}") from err


class RunStore:
    """``runs.jsonl`` in ``directory``: append finished runs, read them back, plan a resume.

    One process writes at a time. Each `append` writes one line, flushes and fsyncs it, so a
    run is on disk before the next starts; a process killed mid-write leaves at most one torn
    last line, which `read` drops and the next `append` cuts off.
    """

    FILENAME = "runs.jsonl"

    def __init__(self, directory: Union[str, os.PathLike]) -> None:
        self.directory = Path(directory)
        self.path = self.directory / self.FILENAME

    def append(self, record: RunRecord) -> None:
        """Write ``record`` as one line and fsync it (the folder is created if needed)."""
        line = json.dumps(record.to_dict(), separators=(",", ":")) + "\n"
        self.directory.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        with open(self.path, "ab") as handle:
            self._cut_torn_tail(handle)
            handle.write(line.encode("utf-8"))
            handle.flush()
            os.fsync(handle.fileno())
        if created:
            _fsync_directory(self.directory)

    def _cut_torn_tail(self, handle: Any) -> None:
        size = handle.seek(0, os.SEEK_END)
        if size == 0:
            return
        with open(self.path, "rb") as reader:
            reader.seek(size - 1)
            if reader.read(1) == b"\n":
                return
            reader.seek(0)
            keep = reader.read().rfind(b"\n") + 1
        _log.warning("%s: dropping a torn last line (%d bytes) left by an interrupted run",
                     self.path, size - keep)
        handle.truncate(keep)

    def read(self) -> list[RunRecord]:
        """Every complete record in file order; [] when there is no file yet.

        A torn last line (a process killed while writing it) is dropped with a warning; so is
        any other line that is not a run record, with its line number.
        """
        if not self.path.exists():
            return []
        records = []
        lines = self.path.read_bytes().split(b"\n")
        for number, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue
            try:
                records.append(RunRecord.from_dict(json.loads(raw.decode("utf-8"))))
            except (ValueError, UnicodeDecodeError) as err:
                where = "torn last line" if number == len(lines) else f"line {number}"
                _log.warning("%s: skipping %s: %s", self.path, where, err)
        return records

    def finished(self) -> dict[str, RunRecord]:
        """The records on disk by `run_key`; a key written twice keeps its last record."""
        return {record.key: record for record in self.read()}

    def pending(self, planned: Iterable[RunPlan], *, retry_failed: bool = False) -> list[RunPlan]:
        """The runs of ``planned`` (in order) that have no record on disk yet.

        A failed or stopped run counts as done (training is deterministic, so running it again
        fails again) unless ``retry_failed``.
        """
        done = self.finished()
        return [plan for plan in planned
                if plan.key not in done or (retry_failed and done[plan.key].status != "ok")]


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # not possible on every platform (Windows)
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def git_commit(directory: Union[str, os.PathLike, None] = None) -> Optional[str]:
    """``git rev-parse HEAD`` of the working tree at ``directory`` (default: the current
    folder), with ``+dirty`` when tracked files differ from it; None where there is no git or
    no repository."""
    def git(*args: str) -> Optional[str]:
        try:
            done = subprocess.run(["git", *args], cwd=directory, capture_output=True, text=True,
                                  timeout=10, check=False)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if not commit:
        return None
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return commit + ("+dirty" if dirty else "")


def environment(directory: Union[str, os.PathLike, None] = None) -> dict[str, Any]:
    """The versions and commit a run card shows: ``plugformer``, ``torch``, ``python``,
    ``platform`` and ``git_commit`` (see `git_commit`; None outside a repository)."""
    import torch

    import plugformer

    return {"plugformer": plugformer.__version__, "torch": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "git_commit": git_commit(directory)}
