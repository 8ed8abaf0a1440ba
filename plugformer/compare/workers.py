"""A comparison shared by worker processes on one or many machines, through a database.

::

    plugformer compare SPECS ... --workers 4 --out results                  # SQLite in results/
    plugformer compare SPECS ... --workers 4 --storage postgresql://host/db --out results
    plugformer compare --join postgresql://host/db --workers 4              # on another machine

Each worker runs `plugformer.compare.compare` with a `plugformer.compare.db.RunQueue`: it builds
the same variants, plans the same runs (the grid, or a search's rung once the rung before it is
done) and trains whichever of them it claims in the database, so every run is trained once
wherever it runs, and its numbers are those of a one-process comparison (a run is a function of
its plan). When all runs are done, a process given ``--out`` writes the table, ``results.json``,
``report.html`` and ``runs.jsonl`` (for ``plugformer report``) there.

Workers pin their threads (``torch.set_num_threads``: ``--threads``, or the machine's cores
shared out among its workers) and take a device each (`worker_device`).
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import sys
from pathlib import Path
from typing import Any, Callable, Optional, Union

from plugformer.compare.db import RunQueue, shown_url, sqlite_url
from plugformer.compare.progress import LogLines
from plugformer.compare.result import Comparison
from plugformer.compare.store import RunStore

__all__ = ["SETTINGS", "finish", "run_join", "run_shared", "start", "worker_device",
           "worker_threads"]

_log = logging.getLogger("plugformer")

#: The arguments of `plugformer.compare.compare` that define a comparison's runs: what is
#: stored in the database, so that ``--join`` needs only the URL.
SETTINGS = ("specs", "task", "steps", "batch", "lr", "seed", "seeds", "budget", "target",
            "curve_points", "eval_lengths", "timing_repeats", "schedule", "weight_decay", "clip",
            "precision", "compile", "grad_accum")


def worker_device(device: str, index: int) -> str:
    """The device of worker ``index``: ``cuda`` goes round-robin over the visible GPUs
    (``cuda:0``, ``cuda:1``, ...), anything else (``cpu``, ``cuda:1``) is every worker's."""
    if device != "cuda":
        return device
    import torch

    count = torch.cuda.device_count()
    if count < 1:
        raise ValueError("--device cuda, but no GPU is visible here; use --device cpu")
    return f"cuda:{index % count}"


def worker_threads(threads: Optional[int], workers: int) -> int:
    """``threads`` if given, else this machine's cores shared out among ``workers`` (at least 1)."""
    if threads is not None:
        if threads < 1:
            raise ValueError(f"--threads must be at least 1, got {threads}")
        return threads
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // workers)


def start(url: Optional[str], settings: Optional[dict[str, Any]] = None, *, workers: int = 1,
          name: Optional[str] = None, out: Union[str, os.PathLike, None] = None,
          device: str = "cpu", threads: Optional[int] = None, heartbeat: float = 10.0,
          poll: float = 0.5) -> Optional[Comparison]:
    """Create the comparison ``settings`` in the database at ``url`` (or find it there), or
    join the one named ``name`` when ``settings`` is None; run ``workers`` worker processes
    here until every run is done; then, given ``out``, write the results there.

    Args:
        url: a SQLAlchemy URL; None: ``sqlite:///<out>/runs.db``.
        settings: `SETTINGS` of `plugformer.compare.compare` (``specs`` as strings), or None
            to join an existing comparison.
        workers: workers here: this process and ``workers - 1`` more (0: none; with ``out``
            this process still trains what is left, then writes the results).
        name: the comparison's name in the database (default: from its settings, or the only
            one there when joining).
        out: the folder for the results; None: leave that to another process.
        device: ``cpu``, ``cuda`` (round-robin over the GPUs) or ``cuda:K``.
        threads: torch threads per worker (default: cores // workers).
        heartbeat: seconds between heartbeats (fixed when the comparison is created).
        poll: seconds between looks at the database while waiting.

    Returns:
        The `Comparison` when ``out`` was given and every run is done, else None.

    Raises:
        ValueError: no ``url`` and no ``out``; a bad ``workers``, ``threads`` or ``device``;
            the named comparison has other settings, or is not in the database.
    """
    if workers < 0:
        raise ValueError(f"--workers must be 0 or more, got {workers}")
    if url is None:
        if out is None:
            raise ValueError("workers need --storage URL, or --out DIR for a SQLite file there")
        Path(out).mkdir(parents=True, exist_ok=True)
        url = sqlite_url(out)
    if settings is None:
        queue = RunQueue.join(url, name, poll=poll)
    else:
        unknown = set(settings) - set(SETTINGS)
        if unknown:
            raise ValueError(f"not settings of a comparison: {', '.join(sorted(unknown))}")
        queue = RunQueue.create(url, settings, name=name, heartbeat=heartbeat, poll=poll)
    per_worker = worker_threads(threads, max(1, workers))
    devices = [worker_device(device, index) for index in range(max(1, workers))]
    _log.info("comparison %s in %s: %d worker(s), %d thread(s) each, on %s", queue.name,
              shown_url(url), workers, per_worker, ", ".join(devices[:workers]) or "none")
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_work, name=f"plugformer-worker-{index}",
                                 args=(url, queue.name, devices[index], per_worker, poll))
                 for index in range(1, workers)]  # this process is worker 0
    for process in processes:
        process.start()
    result = None
    if out is not None:
        result = finish(queue, out, device=devices[0], threads=per_worker)
    elif workers:
        _work(url, queue.name, devices[0], per_worker, poll, queue=queue)
    for process in processes:
        process.join()
        if process.exitcode != 0:
            _log.warning("%s exited with %s; its run, if any, went to another worker",
                         process.name, process.exitcode)
    return result


def finish(queue: RunQueue, out: Union[str, os.PathLike], *, device: str = "cpu",
           threads: Optional[int] = None) -> Comparison:
    """Write the comparison of ``queue`` into ``out``: table, CSV, JSON, figure, report and
    ``runs.jsonl``. Runs not done yet are trained here first (this process works as one more
    worker until every run is done)."""
    import torch

    from plugformer.compare.runner import compare

    if threads is not None:
        torch.set_num_threads(threads)
    with LogLines() as lines:
        result = compare(**queue.stored()["compare"], device=device, out=out, progress=lines,
                         queue=queue)
    _export(result, Path(out))
    return result


def _export(result: Comparison, out: Path) -> None:
    """``runs.jsonl`` of ``result``, replaced whole (so `plugformer report` can read it)."""
    partial = out / (RunStore.FILENAME + ".partial")
    with open(partial, "w", encoding="utf-8") as handle:
        for record in result.runs:
            handle.write(json.dumps(record.to_dict(), separators=(",", ":")) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, out / RunStore.FILENAME)


def _work(url: str, name: str, device: str, threads: int, poll: float,
          queue: Optional[RunQueue] = None) -> None:
    """One worker: train runs of comparison ``name`` until every one is done."""
    import torch

    from plugformer.compare.runner import compare

    torch.set_num_threads(threads)
    queue = queue or RunQueue.join(url, name, poll=poll)
    with LogLines() as lines:
        compare(**queue.stored()["compare"], device=device, progress=lines, queue=queue)


def run_shared(args: argparse.Namespace, *, specs: list[Any], settings: dict[str, Any],
               lr: Any, eval_lengths: Optional[list[int]], out: Optional[Path]) -> int:
    """``plugformer compare SPECS ... --workers N [--storage URL]``: `start` with the parsed
    arguments (``settings``: the command's defaults, ``--demo`` and options merged), then
    print the table; 0 when every variant finished, 1 when some failed."""
    wanted = {"specs": [str(spec) for spec in specs], "task": str(settings["task"]),
              "steps": settings["steps"], "batch": settings["batch"], "lr": lr, "seed": args.seed,
              "seeds": settings.get("seeds", 1), "budget": args.budget, "target": args.target,
              "curve_points": settings["curve_points"], "eval_lengths": eval_lengths,
              "timing_repeats": args.timing_repeats, "schedule": args.schedule,
              "precision": args.precision, "compile": args.compile, "grad_accum": args.grad_accum}
    workers = 1 if args.workers is None else args.workers
    return _shown(lambda: start(args.storage, wanted, workers=workers, name=args.study, out=out,
                                device=args.device, threads=settings["threads"],
                                heartbeat=args.heartbeat), out)


def run_join(args: argparse.Namespace) -> int:
    """``plugformer compare --join URL [--study NAME] [--workers N] [--out DIR]``: add
    workers to the comparison in that database; with ``--out``, write its results when done."""
    if args.specs or args.demo:
        raise ValueError("--join takes the comparison from the database: give no SPEC or --demo "
                         "(the settings are those it was started with)")
    workers = 1 if args.workers is None else args.workers
    return _shown(lambda: start(args.join, None, workers=workers, name=args.study, out=args.out,
                                device=args.device, threads=args.threads),
                  None if args.out is None else Path(args.out))


def _shown(started: Callable[[], Optional[Comparison]], out: Optional[Path]) -> int:
    """Run ``started`` with log lines on stderr; print its table; the exit status."""
    try:
        with LogLines():
            result = started()
    except KeyboardInterrupt:
        print("interrupted: the database keeps every finished run; the same command continues")
        return 130
    if result is None:
        print("this machine's workers are done; the comparison's results are written by a "
              "process with --out when every run is done")
        return 0
    print(result.table("text"), end="")
    if out is not None:
        print(f"wrote {out / RunStore.FILENAME}, results.json and report.html in {out}")
    sys.stdout.flush()
    return 0 if all(row.ok for row in result.rows) else 1
