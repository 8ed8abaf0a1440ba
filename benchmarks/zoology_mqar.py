"""Does attention solve long MQAR at width 64, as Zoology found? Train and report the accuracy.

Zoology (Arora et al. 2023, "Zoology: Measuring and Improving Recall in Efficient Language
Models", fig. 2) trains two-layer models of width 64 on multi-query associative recall in its
long layout (:class:`plugformer.tasks.synthetic.MQARTask` with ``length`` set: the pairs, then
every key asked once at power-law offsets among filler, loss on the answers only) and finds
that attention solves it up to 512 tokens with 64 key-value pairs. This script trains a
``gpt_tiny``-shaped model (2 pre-LN layers, width 64) on it and prints the held-out answer
accuracy (query positions only) after each evaluation, the steps and seconds it took, and the
machine's load average (a busy machine stretches the seconds, not the steps).

Why a curriculum. Trained on the target alone, the model sits on the plateau of "one of the
values in context" (accuracy about 1 / pairs) far longer than a CPU budget: at init each query
spreads its attention over every earlier token, and in the long layout most of them are filler,
so the gradient towards the recall circuit shrinks with the length (8 pairs: solved in 700 steps
at 24 tokens, still on the plateau after 1,100 at 64). Zoology pays with 64 epochs of 100,000
examples on a GPU. Here the first ``--warm-steps`` steps cycle through short examples
(``--warm``, default 8 pairs in 32 and 64 tokens, a few ms each), where the previous-token and
look-up heads form; the rest cycle through ``--stages``, which end at the target. RoPE (the
default ``pe``) carries the circuit to longer sequences at once; learned positions must learn
every position past the warm-up lengths first (stuck near 58% at 16 pairs, 256 tokens).
``--warm-steps 0 --stages PAIRS:LENGTH`` trains on the target alone.

Differences from Zoology, by default: key and value alphabets of 64 each (Zoology draws from
4,096 each; a bigger alphabet lengthens the plateau: each key is seen less often); one filler
symbol (Zoology fills with random tokens); 4 heads and a GELU feed-forward (Zoology: 1 head,
no MLP); AdamW with the one-cycle schedule, batch 64 and a step budget rather than 64 epochs.
Zoology's fig. 2 setting is ``--pairs 64 --length 512 --keys 4096 --values 4096``.

    python benchmarks/zoology_mqar.py                     # 64 pairs, 512 tokens, rope, curriculum
    python benchmarks/zoology_mqar.py --pairs 16 --length 256 --stages 8:64,16:128,16:256
    python benchmarks/zoology_mqar.py --warm-steps 0 --stages 64:512 --model "gpt_tiny(attn=fused)"
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

import plugformer
from plugformer.tasks.synthetic import MQARTask
from plugformer.train.evaluate import evaluate
from plugformer.train.step import SCHEDULES, set_schedule


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=64, help="key-value pairs of the target")
    parser.add_argument("--length", type=int, default=512, help="tokens per target example")
    parser.add_argument("--keys", type=int, default=64)
    parser.add_argument("--values", type=int, default=64)
    parser.add_argument("--model", default="gpt_tiny(attn=fused, pe=rope)",
                        help="model spec; vocab and max_len are set from the task")
    parser.add_argument("--warm", default="8:32,8:64",
                        help="PAIRS:LENGTH,... cycled through for the first --warm-steps steps")
    parser.add_argument("--warm-steps", type=int, default=800)
    parser.add_argument("--stages", default="16:128,32:256,64:512",
                        help="PAIRS:LENGTH,... cycled through after the warm-up (the target last)")
    parser.add_argument("--steps", type=int, default=1600, help="step budget (the schedule's length)")
    parser.add_argument("--minutes", type=float, default=10.0, help="wall-clock budget")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--schedule", default="onecycle", choices=SCHEDULES)
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--eval-size", type=int, default=256)
    parser.add_argument("--target", type=float, default=0.99, help="stop at this answer accuracy")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    return parser.parse_args()


def parse_stages(text: str, keys: int, values: int, option: str) -> list[MQARTask]:
    """``"8:32,16:128"`` as long-layout tasks (pairs 8 in 32 tokens, ...); empty text is none.

    Raises:
        ValueError: an item that is not ``PAIRS:LENGTH`` with two integers, naming ``option``.
    """
    tasks = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        pairs, _, length = item.partition(":")
        if not (pairs.isdigit() and length.isdigit()):
            raise ValueError(f"{option}: expected PAIRS:LENGTH items such as 8:64, got {item!r}")
        tasks.append(MQARTask(pairs=int(pairs), keys=keys, values=values, length=int(length)))
    return tasks


def model_spec(base: str, vocab: int, max_len: int) -> str:
    """``base`` with ``vocab`` and ``max_len`` added as arguments."""
    extra = f"vocab={vocab}, max_len={max_len}"
    if base.endswith(")"):
        return f"{base[:-1]}, {extra})"
    return f"{base}({extra})"


def train_steps(model: torch.nn.Module, warm: list[MQARTask], stages: list[MQARTask], *, steps: int,
                warm_steps: int, batch: int, lr: float, schedule: str, weight_decay: float,
                seed: int) -> Iterator[tuple[int, Tensor, float]]:
    """Train ``model`` on the curriculum (the first ``warm_steps`` steps cycle through ``warm``,
    the rest through ``stages``) with AdamW, loss on the answers only; after each step yield
    (step, its training loss, its seconds)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    for step in range(1, steps + 1):
        tick = time.perf_counter()
        model.train()
        set_schedule(optimizer, step - 1, steps, lr, schedule)
        cycle = warm if step <= warm_steps else stages
        examples = cycle[step % len(cycle)].batch(step, batch, kind="lm", seed=seed)
        loss = F.cross_entropy(examples.logits(model).flatten(0, 1), examples.targets.flatten())  # -100: no loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        yield step, loss.detach(), time.perf_counter() - tick


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    task = MQARTask(pairs=args.pairs, keys=args.keys, values=args.values, length=args.length,
                    eval_size=args.eval_size)
    warm = parse_stages(args.warm, args.keys, args.values, "--warm") if args.warm_steps else []
    stages = parse_stages(args.stages, args.keys, args.values, "--stages") or [task]
    longest = max(t.max_len for t in [task, *warm, *stages])
    spec = model_spec(args.model, task.vocab_size, longest)
    model = plugformer.build(spec)
    params = sum(p.numel() for p in model.parameters())
    print(f"target {task.describe()}  (vocab {task.vocab_size})")
    print(f"curriculum: {args.warm_steps} steps cycling {args.warm or '-'}, then {args.stages or '-'}")
    print(f"model {spec}  ({params:,} parameters), batch {args.batch}, lr {args.lr} {args.schedule}, "
          f"budget {args.steps} steps or {args.minutes:g} min, torch threads {torch.get_num_threads()}")
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())} "
          f"on {os.cpu_count()} CPUs")
    print(f"{'step':>6} {'seconds':>8} {'train loss':>10} {'accuracy':>9}")
    start = time.perf_counter()
    train_seconds = 0.0
    accuracy, step = 0.0, 0
    steps = train_steps(model, warm, stages, steps=args.steps, warm_steps=args.warm_steps, batch=args.batch,
                        lr=args.lr, schedule=args.schedule, weight_decay=args.weight_decay, seed=args.seed)
    for step, loss, seconds in steps:
        train_seconds += seconds
        out_of_time = time.perf_counter() - start > 60 * args.minutes
        if step % args.eval_every == 0 or step == args.steps or out_of_time:
            (result,) = evaluate(model, task)
            accuracy = result.accuracy
            print(f"{step:>6} {train_seconds:>8.1f} {float(loss):>10.4f} {accuracy:>9.4f}", flush=True)
            if accuracy >= args.target or out_of_time:
                break
    reached = "reached" if accuracy >= args.target else "did not reach"
    print(f"{reached} {args.target:.0%}: answer accuracy {accuracy:.4f} on {task.describe()} after "
          f"{step} steps, {train_seconds:.0f} s of training ({time.perf_counter() - start:.0f} s with "
          f"evaluation); load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
