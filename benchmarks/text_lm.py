"""Our gpt_tiny-shaped byte model against x-transformers on real text, same batches.

Ours is ``gpt_tiny(bias=false)`` (2 pre-LN layers, d_model 64, 4 heads, GELU FFN 256, learned
positions, tied embeddings, no attention biases) with the byte vocabulary (257 ids); theirs is
x-transformers' ``TransformerWrapper(num_tokens=257, max_seq_len=context, tie_embedding=True,
attn_layers=Decoder(dim=64, depth=2, heads=4, attn_dim_head=16, attn_flash=True))``: the same
shape (its default head width of 64 would make the attention 4x wider than d_model; its
LayerNorms have no bias, so it has 320 parameters fewer), and PyTorch's SDPA kernel as our
``fused`` attention (``--no-flash``: its default, einsum attention). Both train side by side on
``text(corpus=stdlib)``: at every step both take the same batch, the same AdamW, learning rate
(5% warm-up, cosine to zero) and clipping; the order alternates every step, so drifts in machine
load hit both alike. The first ``--warmup`` steps are not timed.

Printed: tokens per second of each (timed steps' tokens over their summed seconds), the ratio
ours / theirs (target >= 1.0) and the median of the per-step ratios (each pair ran back to back,
so it resists a machine whose load changes), and the validation loss and bits per byte of both
after the same steps, on the task's fixed held-out windows. Needs x-transformers
(``pip install 'plugformer[bench]'``); it says so and exits 2 when it is missing. On a busy
machine prefer ``--threads 1``.

    python benchmarks/text_lm.py                           # 200 steps, context 256, batch 12
    python benchmarks/text_lm.py --steps 2000 --device cuda
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

from plugformer.registry.builder import build
from plugformer.tasks.metrics import bits_per_byte
from plugformer.tasks.text import TextTask, text


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--context", type=int, default=256)
    parser.add_argument("--batch", type=int, default=12)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--warmup", type=int, default=5, help="untimed first steps")
    parser.add_argument("--eval-size", type=int, default=64, help="held-out windows")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-flash", action="store_true",
                        help="x-transformers' default einsum attention instead of SDPA")
    return parser.parse_args()


def theirs_model(vocab: int, context: int, flash: bool = True) -> nn.Module:
    """x-transformers' decoder of gpt_tiny's shape; exits 2 when x-transformers is missing."""
    try:
        from x_transformers import Decoder, TransformerWrapper
    except ImportError:
        print("x-transformers is not installed, so there is nothing to compare against: "
              "pip install 'plugformer[bench]' (or pip install x-transformers)", file=sys.stderr)
        raise SystemExit(2) from None
    return TransformerWrapper(num_tokens=vocab, max_seq_len=context, tie_embedding=True,
                              attn_layers=Decoder(dim=64, depth=2, heads=4, attn_dim_head=16,
                                                  attn_flash=flash))


def cosine(step: int, steps: int) -> float:
    warmup = max(1, steps // 20)
    return min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / steps))


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, ids: torch.Tensor,
               targets: torch.Tensor, device: torch.device) -> float:
    """One timed optimiser step; returns its seconds (synchronised on CUDA)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    loss = F.cross_entropy(model(ids).flatten(0, 1), targets.flatten())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


@torch.no_grad()
def validation(model: nn.Module, task: TextTask, device: torch.device) -> tuple[float, float]:
    """Mean loss per token (nats) and bits per byte on the held-out windows at the context."""
    model.eval()
    loss_sum, tokens, num_bytes = 0.0, 0, 0
    for batch in task.eval_batches(task.length, "lm"):
        logits = model(batch.ids.to(device))
        loss_sum += float(F.cross_entropy(logits.flatten(0, 1).float(), batch.targets.to(device).flatten(),
                                          reduction="sum"))
        tokens += batch.targets.numel()
        num_bytes += int(batch.target_bytes.sum())
    model.train()
    return loss_sum / tokens, bits_per_byte(loss_sum, num_bytes)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    task = text(corpus="stdlib", context=args.context, eval_size=args.eval_size)
    torch.manual_seed(args.seed)
    ours = build(f"gpt_tiny(vocab={task.vocab_size}, max_len={args.context}, bias=false)",
                 device=device)
    torch.manual_seed(args.seed)
    theirs = theirs_model(task.vocab_size, args.context, flash=not args.no_flash).to(device)
    models = {"ours": ours, "x-transformers": theirs}
    optimizers = {name: torch.optim.AdamW(m.parameters(), lr=args.lr, weight_decay=0.01)
                  for name, m in models.items()}
    seconds: dict[str, list[float]] = {name: [] for name in models}
    for step in range(args.steps):
        batch = task.batch(step, args.batch, kind="lm", seed=args.seed)
        ids, targets = batch.ids.to(device), batch.targets.to(device)
        order = list(models) if step % 2 == 0 else list(reversed(models))
        for name in order:
            for group in optimizers[name].param_groups:
                group["lr"] = args.lr * cosine(step, args.steps)
            took = train_step(models[name], optimizers[name], ids, targets, device)
            if step >= args.warmup:
                seconds[name].append(took)
    tokens = args.batch * args.context
    speed = {name: tokens * len(s) / sum(s) for name, s in seconds.items()}
    pairs = statistics.median(b / a for a, b in zip(seconds["ours"], seconds["x-transformers"]))
    params = {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()}
    print(f"text(corpus=stdlib, context={args.context}), batch {args.batch}, {args.steps} steps "
          f"({args.warmup} untimed), lr {args.lr}, {args.threads} thread(s) on {device}, "
          f"x-transformers attention {'einsum' if args.no_flash else 'SDPA'}, "
          f"load average {os.getloadavg()[0]:.2f}")
    for name, model in models.items():
        loss, bpb = validation(model, task, device)
        print(f"  {name:15s} {params[name]:>9,} params  {speed[name]:>10,.0f} tokens/s  "
              f"val loss {loss:.4f}  bits/byte {bpb:.4f}")
    print(f"  tokens/s ours / x-transformers: {speed['ours'] / speed['x-transformers']:.3f} "
          f"(median of per-step ratios {pairs:.3f}); target >= 1.0")


if __name__ == "__main__":
    main()
