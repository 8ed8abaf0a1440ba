"""Compare attention kernels from Python: dense, fused and BRA on the copy task.

Three variants of the same small encoder-decoder train on the same batches from the same seed;
the table shows what each costs (parameters, FLOPs, time, memory) and what it learns (exact
match at the training length and at a longer one)::

    python examples/compare_from_python.py               # about two minutes on two CPU cores
    python examples/compare_from_python.py --fast        # a few seconds: a smoke test
    python examples/compare_from_python.py --out results # also write table, CSV, JSON, PNG
"""

from __future__ import annotations

import argparse

import torch

from plugformer.compare import Progress, compare

SPEC = "transformer_tiny(attn={dense, fused, bra(region=4, topk=2)})"


def report(event: Progress) -> None:
    """A minimal progress callback: one line per variant as it finishes or fails."""
    if event.stage == "done":
        print(f"  [{event.variant + 1}/{event.variants}] {event.label}: done")
    elif event.stage == "failed":
        print(f"  [{event.variant + 1}/{event.variants}] {event.label}: failed ({event.message})")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="a few steps only (a smoke test)")
    parser.add_argument("--out", help="folder for table.md, results.csv, results.json, comparison.png")
    args = parser.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))

    steps, eval_size = (5, 32) if args.fast else (500, 512)
    result = compare(
        SPEC,
        task="copy",
        task_args={"length": 16, "eval_size": eval_size},
        eval_lengths=[24],
        steps=steps,
        batch=16 if args.fast else 64,
        lr=3e-3,
        seed=0,
        timing_repeats=1 if args.fast else 5,
        progress=report,
    )
    print(result.table())

    best = max((row for row in result.rows if row.ok), key=lambda row: row.evals[0].exact_match)
    print(f"best exact match at length 16: {best.label} ({100 * best.evals[0].exact_match:.1f}%)")
    if args.out:
        for kind, path in result.save(args.out).items():
            print(f"wrote {kind}: {path}")


if __name__ == "__main__":
    main()
