"""Training throughput of `plugformer train` on 1 and 2 processes of this machine, side by side.

Each configuration is a real ``plugformer train`` run (``python -m plugformer.train``, under
``torchrun --standalone --nproc-per-node 2`` for two processes) with the same model, task,
global batch and steps; its tokens/s is the median over the steps after the first of the
per-step input tokens (all ranks) per second, from the run's ``metrics.jsonl`` (a median, as a
shared machine's hiccups hit single steps). The loss after the last step is printed too: it is the same in every row, since the global batch and its order do not depend
on the number of processes.

Rows: 1 process x 1 thread, 1 process x 2 threads, 2 processes x 1 thread with ddp, and with
fsdp. On CPU the 2-process rows pay gloo's all-reduce (ddp) or all-gather + reduce-scatter
(fsdp) over loopback on every step; what they buy is a second core that a single-threaded
process leaves idle. A busy machine measures its neighbours: run it when the cores are free.

    python benchmarks/train_scaling.py                                   # gpt_tiny(layers=4), mqar
    python benchmarks/train_scaling.py --spec "gpt_tiny(layers=4, d_model=128)" --batch 64 --steps 30
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", default="gpt_tiny(layers=4, d_model=128)")
    parser.add_argument("--task", default="mqar(pairs=16, eval_size=64)")
    parser.add_argument("--batch", type=int, default=32, help="global batch")
    parser.add_argument("--steps", type=int, default=30)
    return parser.parse_args()


def run(args: argparse.Namespace, *, processes: int, threads: int, strategy: str, out: Path) -> dict:
    train = ["-m", "plugformer.train", args.spec, "--task", args.task, "--batch", str(args.batch),
             "--steps", str(args.steps), "--strategy", strategy, "--no-eval", "--no-progress",
             "--out", str(out)]
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run([*launcher, *train], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"run failed ({processes} processes, {strategy}):\n{done.stderr[-3000:]}")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {"tokens_per_s": statistics.median(r["tokens_per_s"] for r in records[1:] or records),
            "final_loss": records[-1]["loss"]}


def main() -> None:
    args = parse_args()
    rows = [(1, 1, "ddp"), (1, 2, "ddp"), (2, 1, "ddp"), (2, 1, "fsdp")]
    print(f"{args.spec} on {args.task}, global batch {args.batch}, {args.steps} steps, "
          f"{os.cpu_count()} CPUs")
    print(f"{'processes':>9} {'threads':>7} {'strategy':>8} {'tokens/s':>10} {'vs 1x1':>7} {'final loss':>11}")
    base = None
    with tempfile.TemporaryDirectory() as tmp:
        for index, (processes, threads, strategy) in enumerate(rows):
            summary = run(args, processes=processes, threads=threads, strategy=strategy,
                          out=Path(tmp) / str(index))
            speed = summary["tokens_per_s"]
            base = base or speed
            shown = strategy if processes > 1 else "-"
            print(f"{processes:>9} {threads:>7} {shown:>8} {speed:>10,.0f} {speed / base:>6.2f}x "
                  f"{summary['final_loss']:>11.5f}", flush=True)


if __name__ == "__main__":
    main()
