"""Long-context recall by kernel: seconds to reach the target on Zoology's long MQAR, with seeds.

Runs ``benchmarks/zoology_mqar.py`` (the curriculum that gets attention off the recall plateau
on a CPU: short warm-up, then stages ending at the target length) once per (kernel, seed), as
separate one-thread processes, ``--jobs`` at a time, and prints a table: steps and training
seconds to the target answer accuracy (or the accuracy reached when the budget ran out), mean
over seeds with each seed's value. Every kernel sees the same tasks, batches and seeds; only
``attn`` changes. Seconds are wall-clock of the training steps alone (evaluation excluded) and
move with the machine's load: read them side by side, from one run.

    python benchmarks/long_context.py                        # 4 kernels x 2 seeds, 1,024 tokens
    python benchmarks/long_context.py --kernels "fused; bra(region=64, topk=4)" --seeds 0
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

SCRIPT = Path(__file__).with_name("zoology_mqar.py")
KERNELS = "fused;dense;local(window=256);bra(region=64, topk=4)"
CURVE = re.compile(r"^\s*(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s*$")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--kernels", default=KERNELS, help=f"attention specs separated by ';' (default: {KERNELS})")
    parser.add_argument("--seeds", default="0,1", help="comma-separated seeds (default: 0,1)")
    parser.add_argument("--pairs", type=int, default=32, help="key-value pairs of the target (default: 32)")
    parser.add_argument("--length", type=int, default=1024, help="tokens per target example (default: 1024)")
    parser.add_argument("--stages", default="16:128,32:256,32:512,32:1024",
                        help="PAIRS:LENGTH,... after the warm-up, see zoology_mqar.py (default: %(default)s)")
    parser.add_argument("--warm-steps", type=int, default=800,
                        help="steps of short 8-pair examples first, see zoology_mqar.py (default: 800)")
    parser.add_argument("--minutes", type=float, default=8.0,
                        help="wall-clock budget of each run, evaluation included (default: 8)")
    parser.add_argument("--eval-size", type=int, default=128, help="held-out examples (default: 128)")
    parser.add_argument("--jobs", type=int, default=2, help="runs at once, one thread each (default: 2)")
    parser.add_argument("--log-dir", type=Path, default=None, help="keep each run's output here")
    return parser.parse_args()


def run(kernel: str, seed: int, args: argparse.Namespace) -> dict:
    """One training run; its curve and whether and when it reached the target."""
    command = [
        sys.executable, str(SCRIPT), "--model", f"gpt_tiny(attn={kernel}, pe=rope)", "--seed", str(seed),
        "--pairs", str(args.pairs), "--length", str(args.length), "--stages", args.stages,
        "--minutes", str(args.minutes), "--eval-size", str(args.eval_size), "--threads", "1",
        "--warm-steps", str(args.warm_steps),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode:
        raise SystemExit(f"{kernel}, seed {seed} failed:\n{done.stderr[-2000:]}")
    if args.log_dir:
        args.log_dir.mkdir(parents=True, exist_ok=True)
        name = re.sub(r"[^\w.=-]+", "_", f"{kernel}_seed{seed}")
        (args.log_dir / f"{name}.log").write_text(done.stdout)
    curve = [tuple(float(x) for x in match.groups()) for match in map(CURVE.match, done.stdout.splitlines()) if match]
    step, seconds, _, accuracy = curve[-1]
    reached = done.stdout.strip().splitlines()[-1].startswith("reached")
    return {"kernel": kernel, "seed": seed, "reached": reached, "step": int(step), "seconds": seconds,
            "accuracy": accuracy}


def main() -> None:
    args = parse_args()
    kernels = [k.strip() for k in args.kernels.split(";") if k.strip()]
    for kernel in kernels:
        depth = 0
        for char in kernel:
            depth += {"(": 1, ")": -1}.get(char, 0)
            if char == "," and depth == 0:
                raise SystemExit(f"--kernels: {kernel!r} holds a comma outside parentheses; separate kernels "
                                 f"with ';', e.g. \"fused; bra(region=64, topk=4)\"")
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"mqar(pairs={args.pairs}, length={args.length}), stages {args.stages}, target 99% answer accuracy, "
          f"{args.minutes:g} min budget per run, {args.jobs} runs at once, one thread each; "
          f"load average at start {os.getloadavg()[0]:.1f}", flush=True)
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda ks: run(*ks, args), [(k, s) for k in kernels for s in seeds]))
    print("| attn | reached | steps | train s | answer accuracy | per seed (steps, s, accuracy) |")
    print("|---|---:|---:|---:|---:|---|")
    for kernel in kernels:
        rows = [r for r in results if r["kernel"] == kernel]
        reached = sum(r["reached"] for r in rows)
        mean = {key: statistics.mean(r[key] for r in rows) for key in ("step", "seconds", "accuracy")}
        detail = "; ".join(f"{r['step']}, {r['seconds']:.0f}, {r['accuracy']:.1%}" for r in rows)
        print(f"| {kernel} | {reached}/{len(rows)} | {mean['step']:.0f} | {mean['seconds']:.0f} | "
              f"{mean['accuracy']:.1%} | {detail} |")
    print(f"load average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
