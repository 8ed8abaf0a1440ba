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
from typing import Any, Optional, Union

__all__ = ["ARGUMENTS", "DEMO", "EPILOG", "REPORT_ARGUMENTS", "REPORT_EPILOG", "add_compare_arguments",
           "parse_lengths", "parse_rates", "run_compare_command", "run_report_command"]

#: The default comparison of ``--demo``: kernels x positions, each variant at its best of two
#: learning rates (chosen on the validation split), on two seeds, so the table has intervals and
#: marks. 12-token sequences in 4-token regions with top-2 make BRA attend to two thirds of the
#: source (and of the decoder's past), so it really differs from dense attention. Sized for a
#: fresh clone on two CPU cores in under five minutes with set-up: 16 runs of 200 steps took
#: 104 s of CPU time on one thread (wall time on an idle machine is about the same).
DEMO: dict[str, Any] = {
    "specs": ["transformer_tiny(attn={dense, bra(region=4, topk=2)}, pe={sinusoidal, learned})"],
    "task": "copy(length=12)",
    "steps": 200,
    "batch": 32,
    "lr": [3e-3, 1e-2],
    "seeds": 2,
    "curve_points": 5,
    "threads": 1,
}


#: Defaults when neither the command line nor ``--demo`` says otherwise.
DEFAULTS: dict[str, Any] = {"task": "copy", "steps": 1000, "batch": 64, "lr": 3e-3, "seeds": 1,
                            "curve_points": 10, "threads": None}

#: The options of ``plugformer compare`` as ``(flags, add_argument keywords)`` pairs.
ARGUMENTS: tuple[tuple[tuple[str, ...], dict[str, Any]], ...] = (
    (("specs",), {"nargs": "*", "metavar": "SPEC",
                  "help": "model specs; {a, b} choices expand to one variant each"}),
    (("--task", "-t"), {"default": None,
                        "help": "task name or spec, e.g. copy, 'mqar(pairs=8)' (default: copy)"}),
    (("--steps",), {"type": int, "default": None, "help": "training steps per variant (default: 1000)"}),
    (("--batch",), {"type": int, "default": None, "help": "batch size (default: 64)"}),
    (("--lr",), {"default": None, "metavar": "LR[,LR...]",
                 "help": "peak learning rate, or a grid (1e-3,3e-3,1e-2): each variant is "
                         "reported at its best rate on a validation split (default: 3e-3)"}),
    (("--seed",), {"type": int, "default": 0, "help": "first seed of data, initialisation and dropout"}),
    (("--seeds",), {"type": int, "default": None,
                    "help": "seeds per variant: means with 95%% intervals and marks against the "
                            "best (default: 1)"}),
    (("--budget",), {"type": int, "default": None, "metavar": "STEPS",
                     "help": "total optimiser steps over all runs: successive halving over "
                             "variant x learning rate, then seeds for the survivors"}),
    (("--target",), {"type": float, "default": None,
                     "help": "add steps / seconds / FLOPs to reach this value of the primary "
                             "metric, e.g. 0.99"}),
    (("--resume",), {"action": "store_true",
                     "help": "continue the comparison in --out: finished runs are not redone"}),
    (("--curve-points",), {"type": int, "default": None,
                           "help": "evaluations on the eval split during each run (default: 10)"}),
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
                       "help": "write runs.jsonl (as runs end), table.md, results.csv, "
                               "results.json, comparison.png and report.html here"}),
    (("--demo",), {"action": "store_true",
                   "help": "the default comparison: transformer_tiny with attn={dense, bra} and "
                           "pe={sinusoidal, learned} on copy, each at its best of two learning "
                           "rates, on two seeds, in a few minutes"}),
    (("--workers",), {"type": int, "default": None, "metavar": "N",
                      "help": "worker processes here, sharing the runs through a database "
                              "(--storage, or runs.db in --out); each run is trained once"}),
    (("--storage",), {"default": None, "metavar": "URL",
                      "help": "SQLAlchemy URL of the comparison's database, e.g. "
                              "postgresql://user@host/db for several machines "
                              "(default with --workers: sqlite in --out)"}),
    (("--join",), {"default": None, "metavar": "URL",
                   "help": "add workers (--workers, default 1) to the comparison in this "
                           "database; no SPEC needed. With --out, write the results when done"}),
    (("--study",), {"default": None, "metavar": "NAME",
                    "help": "the comparison's name in the database (default: from its "
                            "settings; with --join, the only one there)"}),
    (("--heartbeat",), {"type": float, "default": 10.0, "metavar": "SECONDS",
                        "help": "a worker's heartbeat while it trains a run; a run silent for "
                                "5 heartbeats is taken over by another worker (default: 10)"}),
)

EPILOG = """examples:
  plugformer compare "transformer_tiny(attn={dense, fused})" --task copy --steps 500 --out results
  plugformer compare "gpt_tiny(pe={rope, alibi})" --task "mqar(pairs=8)" --lr 1e-3,3e-3 --seeds 2
  plugformer compare --demo --out demo-results      # the default comparison, a few minutes

{a, b} in a spec expands to one variant each; --out gets runs.jsonl, table.md, results.csv,
results.json, comparison.png and report.html; --resume continues an interrupted --out."""

#: The options of ``plugformer report``.
REPORT_ARGUMENTS: tuple[tuple[tuple[str, ...], dict[str, Any]], ...] = (
    (("directory",), {"metavar": "DIR", "help": "the --out folder of a comparison (its runs.jsonl)"}),
    (("--target",), {"type": float, "default": None,
                     "help": "steps / seconds / FLOPs to reach this value (default: the comparison's)"}),
)


REPORT_EPILOG = """examples:
  plugformer report results/                  # rebuild results/report.html from runs.jsonl
  plugformer report results/ --target 0.99    # with steps / seconds / FLOPs to reach 0.99"""

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


def parse_rates(text: Union[str, float, list[float], None]) -> Union[float, list[float], None]:
    """``"1e-3,3e-3"`` -> ``[0.001, 0.003]``; one rate stays a float; a list or None stays."""
    if text is None or isinstance(text, (int, float, list)):
        return text
    try:
        rates = [float(piece) for piece in str(text).replace(" ", "").split(",") if piece]
    except ValueError:
        raise ValueError(f"--lr takes a rate or comma-separated rates, e.g. 1e-3,3e-3; got {text!r}") from None
    if not rates or any(not rate > 0 for rate in rates):
        raise ValueError(f"--lr rates must be positive, got {text!r}")
    return rates[0] if len(rates) == 1 else rates


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


def run_compare_command(args: argparse.Namespace) -> int:
    """Run ``plugformer compare`` with parsed ``args``; 0 when every variant finished, 1 when
    some failed at run time (their reasons are printed under the table), 130 after Ctrl-C (the
    table of what finished is printed first)."""
    from plugformer.compare.runner import Interrupted, compare

    settings = {**DEFAULTS, **(DEMO if args.demo else {})}
    if getattr(args, "join", None):
        from plugformer.compare.workers import run_join

        return run_join(args)
    specs = list(args.specs) or (DEMO["specs"] if args.demo else [])
    if not specs:
        raise ValueError("give at least one SPEC to compare, or --demo")
    for key in ("task", "steps", "batch", "lr", "seeds", "curve_points", "threads"):
        if getattr(args, key, None) is not None:
            settings[key] = getattr(args, key)
    lr = parse_rates(settings["lr"])
    eval_lengths = parse_lengths(args.eval_lengths)
    if args.resume and not args.out:
        raise ValueError("--resume needs --out DIR: the folder of the comparison to continue")
    out = _check_writable(args.out) if args.out else None
    if settings["threads"] is not None:
        if settings["threads"] < 1:
            raise ValueError(f"--threads must be at least 1, got {settings['threads']}")
        import torch

        torch.set_num_threads(settings["threads"])

    if getattr(args, "workers", None) is not None or getattr(args, "storage", None):
        from plugformer.compare.workers import run_shared

        return run_shared(args, specs=specs, settings=settings, lr=lr, eval_lengths=eval_lengths,
                          out=out)
    started = time.perf_counter()
    try:
        result = compare(
            specs, settings["task"], steps=settings["steps"], batch=settings["batch"], lr=lr,
            seed=args.seed, seeds=settings.get("seeds", 1), budget=args.budget,
            target=args.target, out=out, resume=args.resume, curve_points=settings["curve_points"],
            device=args.device, eval_lengths=eval_lengths, progress=True,
            timing_repeats=args.timing_repeats, schedule=args.schedule,
            precision=args.precision, compile=args.compile, grad_accum=args.grad_accum,
            registry=getattr(args, "registry", None),
        )
    except Interrupted as stop:
        print(stop.comparison.table("text"), end="")
        where = f"; finished runs are in {out / 'runs.jsonl'}, continue with --resume" if out else ""
        print(f"\ninterrupted after {time.perf_counter() - started:.1f} s{where}")
        sys.stdout.flush()
        return 130
    print(result.table("text"), end="")
    print(f"\nwall time {time.perf_counter() - started:.1f} s")
    if out is not None:
        names = ["runs.jsonl", "table.md", "results.csv", "results.json", "comparison.png"]
        print(f"wrote {', '.join(os.fspath(out / n) for n in names if (out / n).exists())}")
        if (out / "report.html").exists():
            print(f"report: {out / 'report.html'}")
    sys.stdout.flush()
    return 0 if all(row.ok for row in result.rows) else 1


def run_report_command(args: argparse.Namespace) -> int:
    """Run ``plugformer report DIR``: rebuild ``DIR/report.html`` from ``DIR/runs.jsonl`` (and
    the search recorded in ``DIR/results.json``, when there is one)."""
    from plugformer.compare.report import write_report
    from plugformer.compare.result import Comparison
    from plugformer.compare.search import annotate
    from plugformer.compare.store import RunStore

    directory = Path(args.directory)
    records = RunStore(directory).read()
    if not records:
        raise ValueError(f"no runs to report in {directory}: expected {directory / RunStore.FILENAME} "
                         f"written by plugformer compare --out {directory}")
    target, search = args.target, {}
    if (directory / "results.json").exists():
        saved = Comparison.from_json(directory / "results.json")
        search = saved.search
        target = saved.settings.get("target") if target is None else target
    path = write_report(annotate(records, search), directory / "report.html", target=target)
    print(f"report: {path}")
    return 0
