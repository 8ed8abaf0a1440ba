"""``plugformer routes``: draw which key regions every ``bra`` layer of a model picked.

Contributed to the ``plugformer`` command through the ``plugformer_register_commands`` hook, as
any plugin's command would be; this module imports nothing heavy until the command runs.
"""

from __future__ import annotations

import argparse
from typing import Any, Callable

from plugformer.hooks import hookimpl

#: The options of ``routes``, as ``argparse.ArgumentParser.add_argument`` takes them.
ARGUMENTS: tuple[tuple[tuple[str, ...], dict[str, Any]], ...] = (
    (("model",), {"metavar": "MODEL",
                  "help": "a model spec using attn=bra(...), or a checkpoint from plugformer.save"}),
    (("--length", "-L"), {"type": int, "default": 256, "help": "tokens per input sequence (default 256)"}),
    (("--input", "-i"), {"default": None, "help": "token ids, comma-separated, instead of random ones"}),
    (("--task", "-t"), {"default": None,
                        "help": "run 16 examples of this task instead, e.g. 'copy(length=32)' (the map averages them)"}),
    (("--seed",), {"type": int, "default": 0, "help": "seed of the random model weights and inputs"}),
    (("--regions",), {"type": int, "default": None, "help": "draw at most this many regions per axis"}),
    (("--out", "-o"), {"default": "routes.png", "help": "the PNG to write (default routes.png)"}),
    (("--stats",), {"action": "store_true",
                    "help": "print route recall, routing entropy and region load per layer and head "
                            "instead of drawing"}),
    (("--queries",), {"type": int, "default": 64,
                      "help": "query rows sampled per call for --stats' route recall (default 64)"}),
)


@hookimpl
def plugformer_register_commands(commands) -> None:
    commands.add("routes", draw_routes, arguments=ARGUMENTS, epilog="""examples:
  plugformer routes "transformer_tiny(attn=bra(region=8, topk=2))" -L 256 -o routes.png
  plugformer routes runs/copy/model.safetensors --task "copy(length=32)" -o routes.png
  plugformer routes "gpt_tiny(attn=bra(region=4, topk=2))" --input 5,6,7,8,9,10,11,12""")


def draw_routes(args: argparse.Namespace) -> int:
    """Draw which key regions each query region of every bra layer picked, as a PNG heat map;
    with ``--stats``, print each layer's route recall, routing entropy and region load."""
    import torch

    from plugformer.plugins.bra.routes import plot_routes, record_routes

    torch.manual_seed(args.seed)
    model = _model_from(args.model, args.registry).eval()
    if args.task:
        run = _task_example(args.task, model, args.registry, args.seed)
    else:
        run = _ids_example(args, model)
    if args.stats:
        return _print_stats(model, run, args.queries, args.seed)
    with torch.no_grad(), record_routes(model) as routes:
        run(model)
    path = plot_routes(routes, args.out, n_regions=args.regions)
    print(f"routes of {len(routes)} bra layers written to {path}")
    return 0


def _print_stats(model: Any, run: Callable[[Any], Any], queries: int, seed: int) -> int:
    """Print one row per bra layer and head: recall of that head, the layer's entropy and load."""
    from plugformer.plugins.bra.diagnostics import routing_stats

    if queries < 1:
        raise ValueError(f"--queries must be at least 1, got {queries}")
    stats = routing_stats(model, run, queries=queries, seed=seed)
    print(f"{'layer':<40} {'head':>4} {'recall':>7} {'entropy':>8} {'load':>6} {'topk':>5} "
          f"{'regions':>8} {'queries':>8}")
    for layer in stats:
        name = layer.name.removeprefix("stack.").removesuffix(".kernel").replace("layers.", "") or "bra"
        for head, recall in enumerate(layer.recall.tolist()):
            print(f"{name:<40} {head:>4} {recall:>7.4f} {layer.entropy:>8.4f} {layer.load:>6.3f} "
                  f"{layer.topk:>5} {layer.regions:>8} {layer.queries:>8}")
    print("recall: share of exact attention's mass on the chosen regions; entropy: normalised "
          "entropy of the chosen regions (1 = even); load: coefficient of variation of choices "
          "per region (0 = even)")
    return 0


def _task_example(task: str, model: Any, registry: Any, seed: int) -> Callable[[Any], Any]:
    """A function running a model on 16 examples of ``task`` laid out for its kind."""
    from plugformer.tasks import make_task

    batch = make_task(task, registry=registry).batch(0, 16, seed=seed, kind=model.kind)
    return batch.logits


def _ids_example(args: argparse.Namespace, model: Any) -> Callable[[Any], Any]:
    """A function running a model on ``--input`` ids or ``--length`` random ones (source and
    target alike for encoder-decoders)."""
    import torch

    vocab = model.lm_head.out_features
    if args.input is not None:
        pieces = [piece for piece in args.input.replace(" ", "").split(",") if piece]
        if not pieces or not all(piece.isdigit() for piece in pieces):
            raise ValueError(f"--input must be comma-separated token ids, got {args.input!r}")
        ids = torch.tensor([[int(piece) for piece in pieces]])
    elif args.length < 1:
        raise ValueError(f"--length must be at least 1, got {args.length}")
    else:
        ids = torch.randint(0, vocab, (1, args.length))
    if int(ids.max()) >= vocab:
        raise ValueError(f"--input holds token id {int(ids.max())}, but the model's vocab is {vocab}")
    return (lambda m: m(ids)) if model.kind == "lm" else (lambda m: m(ids, ids))


def _model_from(text: str, registry: Any) -> Any:
    """A saved model when ``text`` is an existing file, else the model a spec builds (through the
    public API, as a third-party plugin's command would)."""
    from pathlib import Path

    import plugformer

    if Path(text).is_file():
        return plugformer.load(text, registry=registry)
    return plugformer.build(text, registry=registry)
