"""``plugformer compare``: the command-line face of `plugformer.compare.compare`.

::

    plugformer compare "transformer_tiny(attn={dense, fused})" --task copy --steps 500 --out results
    plugformer compare gpt_tiny --task "mqar(pairs=8)" --steps 1500 --lr 1e-3
    plugformer compare --demo --out demo-results

`add_compare_arguments` adds the options to a parser (``ARGUMENTS`` lists them for the
``@argument`` style of :mod:`plugformer.cli`) and `run_compare_command` runs the parsed
arguments: one progress bar per variant on stderr, the table on stdout, the files in ``--out``.
Errors a user can cause (a bad spec, an unknown task, an unwritable ``--out``) are raised as
``ValueError`` / ``LookupError`` before anything trains, for the CLI's one-line error report.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

__all__ = ["ARGUMENTS", "DEMO", "add_compare_arguments", "run_compare_command", "parse_lengths"]

#: The default comparison of ``--demo``: the six variants of DESIGN.md on a copy task sized to
#: finish in under three minutes on two CPU cores (measured: 141 s with the machine shared).
#: 16-token sequences in 4-token regions with top-2 make BRA attend to half of the source (and of
#: the decoder's past), so it really differs from dense attention. 300 steps at a peak LR of 5e-3
#: take the default transformer_tiny (fused, sinusoidal) to >= 99.8% exact match (100% on seeds
#: 0-2 with one thread), while learned positions are still far behind: a real difference.
DEMO: dict[str, Any] = {
    "specs": ["transformer_tiny(attn={dense, fused, bra(region=4, topk=2)}, pe={sinusoidal, learned})"],
    "task": "copy(length=16)",
    "steps": 300,
    "batch": 64,
    "lr": 5e-3,
}


#: Defaults when neither the command line nor ``--demo`` says otherwise.
DEFAULTS: dict[str, Any] = {"task": "copy", "steps": 1000, "batch": 64, "lr": 3e-3}

#: The options of ``plugformer compare`` as ``(flags, add_argument keywords)`` pairs.
ARGUMENTS: tuple[tuple[tuple[str, ...], dict[str, Any]], ...] = (
    (("specs",), {"nargs": "*", "metavar": "SPEC",
                  "help": "model specs; {a, b} choices expand to one variant each"}),
    (("--task", "-t"), {"default": None,
                        "help": "task name or spec, e.g. copy, 'mqar(pairs=8)' (default: copy)"}),
    (("--steps",), {"type": int, "default": None, "help": "training steps per variant (default: 1000)"}),
    (("--batch",), {"type": int, "default": None, "help": "batch size (default: 64)"}),
    (("--lr",), {"type": float, "default": None, "help": "peak learning rate (default: 3e-3)"}),
    (("--seed",), {"type": int, "default": 0, "help": "seed of data, initialisation and dropout"}),
    (("--eval-lengths",), {"default": None, "metavar": "N,N",
                           "help": "further lengths to evaluate after training, e.g. 32,64"}),
    (("--device",), {"default": "cpu", "help": "cpu, cuda, cuda:1, ..."}),
    (("--schedule",), {"default": "onecycle", "choices": ["onecycle", "cosine", "constant"],
                       "help": "learning-rate schedule"}),
    (("--precision",), {"default": "fp32", "choices": ["fp32", "bf16"],
                        "help": "fp32, or bf16 autocast (weights stay fp32)"}),
    (("--compile",), {"action": "store_true", "help": "torch.compile every block of each variant"}),
    (("--grad-accum",), {"type": int, "default": 1, "metavar": "K",
                         "help": "micro-batches per step; --batch must be a multiple (default: 1)"}),
    (("--threads",), {"type": int, "default": None,
                      "help": "CPU threads for torch (default: torch's choice). Models this small "
                              "often run fastest on 1, and a busy machine hurts more threads"}),
    (("--timing-repeats",), {"type": int, "default": 5, "help": "timed rounds (median reported)"}),
    (("--out", "-o"), {"default": None, "metavar": "DIR",
                       "help": "write table.md, results.csv, results.json, comparison.png here"}),
    (("--demo",), {"action": "store_true",
                   "help": "the default comparison: transformer_tiny with attn={dense, fused, bra} "
                           "and pe={sinusoidal, learned} on copy, in under three minutes"}),
)


def add_compare_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``plugformer compare`` to ``parser``."""
    for flags, options in ARGUMENTS:
        parser.add_argument(*flags, **options)


def parse_lengths(text: Optional[str]) -> Optional[list[int]]:
    """``"32,64"`` -> ``[32, 64]``; None stays None."""
    if text is None:
        return None
    try:
        lengths = [int(piece) for piece in text.replace(" ", "").split(",") if piece]
    except ValueError:
        raise ValueError(f"--eval-lengths takes comma-separated integers, e.g. 32,64; got {text!r}") from None
    if any(n < 1 for n in lengths):
        raise ValueError(f"--eval-lengths must be positive, got {text!r}")
    return lengths


def _check_writable(directory: str) -> Path:
    """Create ``directory`` if needed and prove it takes a file; a clear error if not."""
    path = Path(directory)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".plugformer-write-test-"):
            pass
    except OSError as err:
        reason = err.strerror or str(err)
        raise ValueError(f"cannot write results to --out {directory!r}: {reason}") from None
    return path


class _Bars:
    """One rich progress bar per variant, on stderr, fed by `Progress` events."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeElapsedColumn)

        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(),
            console=Console(stderr=True),
        )
        self.tasks: dict[int, Any] = {}

    def __enter__(self) -> "_Bars":
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def __call__(self, event: Any) -> None:
        if event.variant not in self.tasks:
            self.tasks[event.variant] = self.progress.add_task(
                event.label, total=event.steps, loss="-", start=False)
        task = self.tasks[event.variant]
        name = event.label
        if event.stage == "measure":
            self.progress.update(task, description=f"{name} [dim](measuring)")
        elif event.stage == "train":
            if event.step == 1:
                self.progress.start_task(task)
            self.progress.update(task, completed=event.step, description=name,
                                 loss=f"{event.loss:.4f}" if event.loss is not None else "-")
        elif event.stage == "eval":
            self.progress.update(task, description=f"{name} [dim](evaluating)")
        elif event.stage == "done":
            self.progress.update(task, description=f"{name} [green]done")
        elif event.stage == "failed":
            self.progress.update(task, description=f"{name} [red]failed: {event.message}")
            self.progress.stop_task(task)


def run_compare_command(args: argparse.Namespace) -> int:
    """Run ``plugformer compare`` with parsed ``args``; 0 when every variant finished, 1 when
    some failed at run time (their reasons are printed under the table)."""
    from plugformer.compare.runner import compare

    settings = {**DEFAULTS, **(DEMO if args.demo else {})}
    specs = list(args.specs) or (DEMO["specs"] if args.demo else [])
    if not specs:
        raise ValueError("give at least one SPEC to compare, or --demo")
    for key in ("task", "steps", "batch", "lr"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    eval_lengths = parse_lengths(args.eval_lengths)
    out = _check_writable(args.out) if args.out else None
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be at least 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)

    started = time.perf_counter()
    with _Bars() as bars:
        result = compare(
            specs, settings["task"], steps=settings["steps"], batch=settings["batch"],
            lr=settings["lr"], seed=args.seed, device=args.device, eval_lengths=eval_lengths,
            progress=bars, timing_repeats=args.timing_repeats, schedule=args.schedule,
            precision=args.precision, compile=args.compile, grad_accum=args.grad_accum,
            registry=getattr(args, "registry", None),
        )
    print(result.table("text"), end="")
    print(f"\nwall time {time.perf_counter() - started:.1f} s")
    if out is not None:
        paths = result.save(out)
        print("wrote " + ", ".join(os.fspath(p) for p in paths.values()))
    sys.stdout.flush()
    return 0 if all(row.ok for row in result.rows) else 1
