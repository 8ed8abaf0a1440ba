"""Does attention solve long MQAR at width 64, as Zoology found? Train and report the accuracy.

Zoology (Arora et al. 2023, "Zoology: Measuring and Improving Recall in Efficient Language
Models", fig. 2) trains two-layer models of width 64 on multi-query associative recall at
sequence length 512 with 64 key-value pairs and finds that attention solves it (near 100%
answer accuracy) where gated convolutions do not. This script trains a ``gpt_tiny``-shaped
model (2 pre-LN layers, width 64) with ``fused`` attention on ``mqar(pairs=64, length=512)``,
Zoology's long layout (:class:`plugformer.tasks.synthetic.MQARTask`), and prints the held-out
answer accuracy (query positions only) after each evaluation, the steps and seconds it took,
and the machine's load average (a busy machine stretches the seconds, not the steps).

Differences from Zoology, by default: a key and a value alphabet of 256 each (Zoology draws
from 4,096 each, vocabulary 8,192) to keep the output layer cheap on a CPU; one filler symbol
(Zoology fills with random tokens); AdamW with a cosine schedule, batch 64, a step budget
rather than Zoology's 64 epochs of 100,000 examples. Pass ``--keys 4096 --values 4096`` for
Zoology's alphabet.

    python benchmarks/zoology_mqar.py                          # 600 steps or 20 minutes
    python benchmarks/zoology_mqar.py --steps 3000 --minutes 120 --target 0.99
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.nn.functional as F

import plugformer
from plugformer.tasks.synthetic import MQARTask
from plugformer.train.evaluate import evaluate
from plugformer.train.step import set_schedule


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--keys", type=int, default=256)
    parser.add_argument("--values", type=int, default=256)
    parser.add_argument("--model", default="gpt_tiny(attn=fused)",
                        help="model spec; vocab and max_len are set from the task")
    parser.add_argument("--steps", type=int, default=600, help="step budget (the cosine schedule's length)")
    parser.add_argument("--minutes", type=float, default=20.0, help="wall-clock budget")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--eval-size", type=int, default=256)
    parser.add_argument("--target", type=float, default=0.99, help="stop at this answer accuracy")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def model_spec(base: str, task: MQARTask) -> str:
    """``base`` with the task's vocabulary and length added as arguments."""
    extra = f"vocab={task.vocab_size}, max_len={task.max_len}"
    if base.endswith(")"):
        return f"{base[:-1]}, {extra})"
    return f"{base}({extra})"


def main() -> None:
    args = parse_args()
    torch.manual_seed(args.seed)
    task = MQARTask(pairs=args.pairs, keys=args.keys, values=args.values, length=args.length,
                    eval_size=args.eval_size)
    spec = model_spec(args.model, task)
    model = plugformer.build(spec)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.1)
    params = sum(p.numel() for p in model.parameters())
    print(f"task  {task.describe()}  (vocab {task.vocab_size})")
    print(f"model {spec}  ({params:,} parameters), batch {args.batch}, lr {args.lr}, "
          f"budget {args.steps} steps or {args.minutes:g} min, torch threads {torch.get_num_threads()}")
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())} "
          f"on {os.cpu_count()} CPUs")
    print(f"{'step':>6} {'seconds':>8} {'train loss':>10} {'accuracy':>9}")
    start = time.perf_counter()
    train_seconds = 0.0
    accuracy, step = 0.0, 0
    for step in range(1, args.steps + 1):
        tick = time.perf_counter()
        model.train()
        set_schedule(optimizer, step - 1, args.steps, args.lr, "cosine")
        batch = task.batch(step, args.batch, kind="lm", seed=args.seed)
        logits = batch.logits(model)
        loss = F.cross_entropy(logits.flatten(0, 1), batch.targets.flatten())
        loss.backward()
        loss = loss.detach()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        train_seconds += time.perf_counter() - tick
        out_of_time = time.perf_counter() - start > 60 * args.minutes
        if step % args.eval_every == 0 or step == args.steps or out_of_time:
            (result,) = evaluate(model, task)
            accuracy = result.accuracy
            print(f"{step:>6} {train_seconds:>8.1f} {float(loss):>10.4f} {accuracy:>9.4f}", flush=True)
            if accuracy >= args.target or out_of_time:
                break
    reached = "reached" if accuracy >= args.target else "did not reach"
    print(f"{reached} {args.target:.0%}: answer accuracy {accuracy:.4f} after {step} steps, "
          f"{train_seconds:.0f} s of training ({time.perf_counter() - start:.0f} s with evaluation); "
          f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
