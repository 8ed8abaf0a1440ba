"""``plugformer train``: the command-line face of `plugformer.train.train`.

::

    plugformer train gpt_tiny --task "mqar(pairs=8)" --steps 2000 --batch 64 --out runs/mqar
    torchrun --nproc-per-node 2 --no-python plugformer train gpt_tiny --task "mqar(pairs=8)" \\
        --steps 2000 --batch 64 --out runs/mqar --strategy fsdp --checkpoint-every 500
    torchrun --nproc-per-node 2 -m plugformer.train ...      (the same, without the console script)

`add_train_arguments` adds the options to a parser (``ARGUMENTS`` lists them for the
``@argument`` style of :mod:`plugformer.cli`); `run_train_command` runs the parsed arguments and
returns the exit status: 0 done, 1 a run-time failure, 2 a mistake in what was asked.

In a multi-rank run only one rank reports an error: rank 0 for errors every rank meets alike (a
bad argument, a non-finite loss), the failing rank for its own (its message names it); the
others exit quietly or, when a collective broke under them, say so in one line.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from typing import Any

import torch.distributed as dist

from plugformer.registry.discovery import PluginError
from plugformer.tasks.metrics import eval_line

__all__ = ["ARGUMENTS", "EPILOG", "add_train_arguments", "run_train_command"]

#: Errors caused by what the user asked: one line, exit status 2.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, LookupError, PluginError)

#: The options of ``plugformer train`` as ``(flags, add_argument keywords)`` pairs.
ARGUMENTS: tuple[tuple[tuple[str, ...], dict[str, Any]], ...] = (
    (("spec",), {"metavar": "SPEC", "help": "the model, e.g. gpt_tiny or 'transformer_tiny(attn=bra)'"}),
    (("--task", "-t"), {"default": "copy", "help": "task name or spec, e.g. copy, 'mqar(pairs=8)' "
                                                   "(default: copy)"}),
    (("--steps",), {"type": int, "default": 1000, "help": "optimiser steps (default: 1000)"}),
    (("--batch",), {"type": int, "default": 64,
                    "help": "global batch: examples per step over all ranks and micro-batches, a "
                            "multiple of ranks x --grad-accum (default: 64)"}),
    (("--out", "-o"), {"required": True, "metavar": "DIR",
                       "help": "run folder: metrics.jsonl, loss.png, checkpoints/, model.safetensors"}),
    (("--strategy",), {"default": "ddp", "choices": ["ddp", "fsdp"],
                       "help": "data parallelism under torchrun: ddp replicas or fsdp (FSDP2) "
                               "shards (default: ddp)"}),
    (("--lr",), {"type": float, "default": 3e-3, "help": "peak learning rate (default: 3e-3)"}),
    (("--schedule",), {"default": "cosine", "choices": ["cosine", "constant"],
                       "help": "learning-rate schedule (default: cosine, 5%% warm-up)"}),
    (("--weight-decay",), {"type": float, "default": 0.01, "help": "AdamW weight decay (default: 0.01)"}),
    (("--clip",), {"type": float, "default": 1.0, "help": "gradient-norm clip, 0 = off (default: 1.0)"}),
    (("--precision",), {"default": "fp32", "choices": ["fp32", "bf16"],
                        "help": "bf16 runs forward under autocast; weights stay fp32 (default: fp32)"}),
    (("--grad-accum",), {"type": int, "default": 1, "metavar": "K",
                         "help": "micro-batches per rank per step (default: 1)"}),
    (("--compile",), {"action": "store_true", "help": "torch.compile every block"}),
    (("--checkpoint-every",), {"type": int, "default": 0, "metavar": "K",
                               "help": "write a resumable checkpoint every K steps and at the end "
                                       "(default: 0, none)"}),
    (("--resume",), {"action": "store_true",
                     "help": "continue from the last checkpoint in --out (from scratch if none)"}),
    (("--seed",), {"type": int, "default": 0, "help": "seed of initialisation, data and dropout"}),
    (("--device",), {"default": None,
                     "help": "cpu, cuda, ... (default: cuda:LOCAL_RANK when CUDA is there, else cpu)"}),
    (("--no-eval",), {"action": "store_true", "help": "skip the held-out evaluation at the end"}),
    (("--no-progress",), {"action": "store_true", "help": "no progress bar"}),
)

EPILOG = """examples:
  plugformer train gpt_tiny --task "mqar(pairs=8)" --steps 2000 --batch 64 --out runs/mqar
  plugformer train "transformer_tiny(attn=bra(region=4, topk=2))" --task "copy(length=32)" \\
      --steps 500 --lr 5e-3 --out runs/copy
  torchrun --nproc-per-node 2 --no-python plugformer train gpt_tiny --task "mqar(pairs=8)" \\
      --out runs/mqar --strategy fsdp --checkpoint-every 500      # two ranks, FSDP2 shards
  plugformer train gpt_tiny --task "mqar(pairs=8)" --steps 2000 --batch 64 --out runs/mqar --resume

--resume goes on from the last checkpoint in --out; --out gets metrics.jsonl, loss.png,
checkpoints/ and model.safetensors."""


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``plugformer train`` to ``parser``."""
    for flags, options in ARGUMENTS:
        parser.add_argument(*flags, **options)


def _env_rank() -> tuple[int, int]:
    try:
        return int(os.environ.get("RANK", "0") or 0), int(os.environ.get("WORLD_SIZE", "1") or 1)
    except ValueError:
        return 0, 1


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: Any = None, line: Any = None) -> None:
    _say(f"plugformer: warning: {message}")


def run_train_command(args: argparse.Namespace) -> int:
    """Run ``plugformer train`` with parsed ``args``; returns the exit status."""
    from plugformer.train.distributed import PeerFailed, is_peer_loss
    from plugformer.train.loop import TrainError, train

    rank, world = _env_rank()
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            result = train(
                args.spec, out=args.out, task=args.task, steps=args.steps, batch=args.batch,
                strategy=args.strategy, lr=args.lr, schedule=args.schedule,
                weight_decay=args.weight_decay, clip=args.clip, precision=args.precision,
                grad_accum=args.grad_accum, compile=args.compile,
                checkpoint_every=args.checkpoint_every, resume=args.resume, seed=args.seed,
                device=args.device, evaluate_at_end=not args.no_eval, progress=not args.no_progress,
                registry=getattr(args, "registry", None),
            )
    except PeerFailed:
        return 1
    except Exception as err:
        if getattr(args, "traceback", False):
            raise
        everywhere = len(getattr(err, "failed_ranks", ())) == world
        alike = everywhere or isinstance(err, TrainError) or not (dist.is_available() and dist.is_initialized())
        if world > 1 and alike:
            if rank == 0:
                _say(f"plugformer: error: {err}")
        elif world > 1 and is_peer_loss(err):
            _say(f"plugformer: rank {rank} stopped: another rank failed or went away mid-step "
                 f"(that rank reports why)")
        else:
            where = f" (rank {rank} of {world})" if world > 1 else ""
            message = str(err) if isinstance(err, USER_ERRORS) else f"{type(err).__name__}: {err}"
            hint = "" if isinstance(err, USER_ERRORS) else "\n(--traceback shows where)"
            _say(f"plugformer: error{where}: {message}{hint}")
        return 2 if isinstance(err, USER_ERRORS) else 1
    if rank == 0:
        final = f"{result.losses[-1]:.4f}" if result.losses else "-"
        print(f"steps {result.start_step}->{result.steps}  final loss {final}  "
              f"{result.tokens_per_s:,.0f} tokens/s  {result.wall_s:.1f} s")
        for score in result.evals:
            print(f"eval length {score.length}: {eval_line(score, sep='  ')}")
        print(f"model: {result.model_path}")
    return 0
