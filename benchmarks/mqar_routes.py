"""Why does BRA plateau on long MQAR? Train it, then split its answers by what its router picked.

On Zoology's long MQAR (``benchmarks/long_context.py``) ``bra(region=64, topk=4)`` stops near 85%
answer accuracy at 1,024 tokens while fused attention reaches 99%. All key-value pairs sit in the
first region, so a query can only look its answer up if its router picks region 0 as one of its
``topk - 1`` earlier regions. This script trains ``gpt_tiny(attn=bra(...), pe=rope)`` with
``zoology_mqar.py``'s curriculum for ``--steps`` steps (one thread), then, on held-out target
examples, reports per BRA layer: how often region 0 was picked at the answer positions (all, and
those ``--far`` tokens or more in), the answer accuracy when it was and when it was not, and the
layer's route recall (:func:`plugformer.plugins.bra.routing_stats`).

    python benchmarks/mqar_routes.py                # 1,000 steps, about 5 minutes on one thread
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path

import torch

import plugformer
from plugformer.plugins.bra import BiLevelRoutingAttention
from plugformer.plugins.bra.diagnostics import routing_stats
from plugformer.tasks.synthetic import MQARTask


def zoology():
    """``benchmarks/zoology_mqar.py`` as a module (its curriculum, parser and spec helper)."""
    spec = importlib.util.spec_from_file_location("zoology_mqar", Path(__file__).with_name("zoology_mqar.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--attn", default="bra(region=64, topk=4)", help="the BRA spec (default: %(default)s)")
    parser.add_argument("--pairs", type=int, default=32, help="key-value pairs (default: 32)")
    parser.add_argument("--length", type=int, default=1024, help="tokens per target example (default: 1024)")
    parser.add_argument("--stages", default="16:128,32:256,32:512,32:1024",
                        help="after the warm-up (default: %(default)s)")
    parser.add_argument("--warm-steps", type=int, default=800, help="steps of 8:32,8:64 first (default: 800)")
    parser.add_argument("--steps", type=int, default=1000, help="training steps (default: 1000)")
    parser.add_argument("--far", type=int, default=256, help="'far' answers sit at least this deep (default: 256)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    zm = zoology()
    task = MQARTask(pairs=args.pairs, keys=64, values=64, length=args.length, eval_size=128)
    warm = zm.parse_stages("8:32,8:64", 64, 64, "--warm")
    stages = zm.parse_stages(args.stages, 64, 64, "--stages")
    model = plugformer.build(zm.model_spec(f"gpt_tiny(attn={args.attn}, pe=rope)", task.vocab_size, args.length))
    start = time.perf_counter()
    for _ in zm.train_steps(model, warm, stages, steps=args.steps, warm_steps=args.warm_steps, batch=64, lr=1e-3,
                            schedule="onecycle", weight_decay=0.1, seed=args.seed):
        pass
    print(f"trained {args.steps} steps in {time.perf_counter() - start:.0f} s; {task.describe()}")

    model.eval()
    batch = task.batch(0, 32, kind="lm", seed=10_000 + args.seed)
    chosen: dict[str, torch.Tensor] = {}

    def keeper(name: str):
        def hook(kernel, inputs, kwargs, output):
            q, k = inputs[0], inputs[1]
            chosen[name] = kernel.route(q, k, mask=kwargs.get("mask"), causal=kwargs.get("causal", False))
        return hook

    hooks = [m.register_forward_hook(keeper(name), with_kwargs=True)
             for name, m in model.named_modules() if isinstance(m, BiLevelRoutingAttention)]
    with torch.no_grad():
        logits = batch.logits(model)
    for hook in hooks:
        hook.remove()
    answer = batch.targets != -100  # (B, L)
    right = (logits.argmax(-1) == batch.targets) & answer
    far = answer & (torch.arange(answer.shape[1])[None] >= args.far)
    print(f"answer accuracy {float(right.sum() / answer.sum()):.1%}")
    print(f"{'layer':<36} {'region 0 picked':>15} {'far':>6} {'right if picked':>15} {'right if not':>12}")
    for name, routes in chosen.items():  # routes: (B, L, S) region indices per query
        picked = (routes == 0).any(-1) & answer
        not_picked = answer & ~picked
        print(f"{name:<36} {float(picked.sum() / answer.sum()):>15.1%} "
              f"{float((picked & far).sum() / far.sum().clamp(min=1)):>6.1%} "
              f"{float((right & picked).sum() / picked.sum().clamp(min=1)):>15.1%} "
              f"{float((right & not_picked).sum() / not_picked.sum().clamp(min=1)):>12.1%}")
    for stats in routing_stats(model, batch.logits):
        print(f"{stats.name}: route recall per head {[round(float(r), 3) for r in stats.recall]}")


if __name__ == "__main__":
    main()
