"""The ``plugformer`` command.

Each subcommand is one function taking the parsed arguments and returning an exit code,
declared with :func:`command` and its options with :func:`argument`::

    @command("hello")
    @argument("who", help="whom to greet")
    def hello(args: argparse.Namespace) -> int:
        '''Say hello.'''
        print(f"hello {args.who}")
        return 0

``args.registry`` is the registry to use. Errors a user can cause (a bad spec, an unknown part,
a bad value) print one line on stderr and exit with status 2; ``--traceback`` shows them whole.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Callable, Optional, Sequence

import attrs

from plugformer.registry.discovery import PluginError
from plugformer.registry.parts import KINDS, close_matches
from plugformer.registry.registry import Registry, UnknownPartError, default_registry

Handler = Callable[[argparse.Namespace], int]

#: Errors caused by what the user typed (``SpecError`` is a ``ValueError``): reported in one
#: line, exit status 2, no traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, LookupError, PluginError)


@attrs.frozen
class Command:
    """A subcommand: its name, one-line help, handler and argparse arguments."""

    name: str
    help: str
    handler: Handler
    arguments: tuple[tuple[tuple[str, ...], dict[str, Any]], ...]


#: Subcommands by name, in the order ``--help`` lists them.
COMMANDS: dict[str, Command] = {}


def command(name: str, help: Optional[str] = None) -> Callable[[Handler], Handler]:
    """Decorator: make ``handler`` the subcommand ``name`` (help: its docstring's first line)."""

    def decorate(handler: Handler) -> Handler:
        doc_lines = (handler.__doc__ or "").strip().splitlines()
        text = help or (doc_lines[0] if doc_lines else "")
        arguments = tuple(getattr(handler, "_cli_arguments", ()))
        COMMANDS[name] = Command(name=name, help=text, handler=handler, arguments=arguments)
        return handler

    return decorate


def argument(*flags: str, **options: Any) -> Callable[[Handler], Handler]:
    """Decorator: one ``argparse`` argument of a subcommand, as ``add_argument`` takes it.
    Stack them under :func:`command`, in the order they should appear."""

    def decorate(handler: Handler) -> Handler:
        handler.__dict__.setdefault("_cli_arguments", []).insert(0, (flags, options))
        return handler

    return decorate


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every registered subcommand."""
    parser = argparse.ArgumentParser(
        prog="plugformer",
        description="Transformer parts behind a plugin registry.",
    )
    parser.add_argument(
        "--traceback", action="store_true", help="show the full traceback of an error"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for cmd in COMMANDS.values():
        sub = subparsers.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        for flags, options in cmd.arguments:
            sub.add_argument(*flags, **options)
        sub.set_defaults(handler=cmd.handler)
    return parser


def main(argv: Optional[Sequence[str]] = None, *, registry: Optional[Registry] = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``) and return its exit status.

    ``registry`` replaces the default registry (for tests).
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    args.registry = registry if registry is not None else default_registry()
    try:
        return args.handler(args)
    except USER_ERRORS as exc:
        if args.traceback:
            raise
        print(f"plugformer: error: {exc}", file=sys.stderr)
        return 2


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, title: str = "") -> None:
    """A table on stdout: a ``rich`` table on a terminal, plain aligned columns otherwise (for
    pipes and scripts)."""
    cells = [[_cell(value) for value in row] for row in rows]
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table

        table = Table(*headers, title=title or None, title_justify="left")
        for row in cells:
            table.add_row(*row)
        Console(file=sys.stdout).print(table)
        return
    if title:
        print(title)
    widths = [max(len(line[i]) for line in [list(headers), *cells]) for i in range(len(headers))]
    for line in [list(headers), *cells]:
        padded = [text.ljust(width) for text, width in zip(line[:-1], widths)]
        print("  ".join([*padded, line[-1]]).rstrip())


@command("list")
@argument("kind", nargs="?", metavar="KIND", help=f"only this kind: {', '.join(KINDS)}")
@argument("--pattern", "-p", help="wildcard on the name, e.g. '*bra*'")
def list_parts(args: argparse.Namespace) -> int:
    """List registered parts: kind, name and summary."""
    parts = args.registry.list(args.kind, args.pattern)
    if not parts:
        what = f"{args.kind} parts" if args.kind else "parts"
        match = f" match {args.pattern!r}" if args.pattern else " are registered"
        print(f"no {what}{match}", file=sys.stderr)
        return 0
    print_table(["kind", "name", "summary"], [(p.kind, p.name, p.summary) for p in parts])
    return 0


@command("describe")
@argument("name", metavar="NAME", help="a part: kind:name, or a name unique across kinds")
def describe_part(args: argparse.Namespace) -> int:
    """Describe a part: summary, arguments with types and defaults, capabilities, source."""
    registry: Registry = args.registry
    kind, sep, name = args.name.partition(":")
    if not sep:
        kind = find_kind(registry, args.name)
        name = args.name
    print(registry.describe(kind, name))
    return 0


@command("plugins")
@argument("--verbose", "-v", action="store_true", help="show the traceback of each failure")
def list_plugins(args: argparse.Namespace) -> int:
    """List loaded plugins with their versions, then plugins that failed and why."""
    registry: Registry = args.registry
    plugins = registry.plugins
    print_table(
        ["plugin", "distribution", "version", "module"],
        [(p.name, p.distribution, p.version, p.module) for p in plugins],
        title=f"{_count(plugins, 'plugin')} loaded",
    )
    if registry.disabled:
        print(f"\ndisabled by PLUGFORMER_DISABLE_PLUGINS: {', '.join(registry.disabled)}")
    failures = registry.failures
    if failures:
        print()
        print_table(
            ["plugin", "distribution", "error"],
            [(f.name, f.distribution, f.error) for f in failures],
            title=f"{_count(failures, 'plugin')} failed to load",
        )
        if args.verbose:
            for failure in failures:
                print(f"\n--- {failure.name} ---\n{failure.traceback.rstrip()}")
    return 0


@command("build")
@argument("spec", metavar="SPEC", help="a model spec, e.g. 'transformer_tiny(attn=bra(region=8, topk=2))'")
def build_model(args: argparse.Namespace) -> int:
    """Build a model: print its canonical spec and its parameters per part."""
    from plugformer.core.summary import parameter_table
    from plugformer.registry.builder import build

    model = build(args.spec, registry=args.registry, device="meta")  # counts need no memory
    print(model.spec)
    table = parameter_table(model)
    rows = [(row.path, row.part, row.layers, f"{row.parameters:,}") for row in table]
    rows.append(("total", "", "", f"{sum(row.parameters for row in table):,}"))
    print_table(("part", "module", "layers", "parameters"), rows)
    return 0


@command("generate")
@argument("checkpoint", metavar="CHECKPOINT", help="a file written by plugformer.save")
@argument("--input", "-i", required=True, action="append",
          help="token ids, comma-separated (repeat for a batch): the source (encdec) or prompt (lm)")
@argument("--max-new-tokens", "-n", type=int, default=32)
@argument("--bos-id", type=int, default=1, help="first decoder token of encdec models")
@argument("--eos-id", type=int, default=None)
@argument("--temperature", type=float, default=0.0, help="0 = greedy")
@argument("--top-k", type=int, default=None)
@argument("--top-p", type=float, default=None)
@argument("--beams", type=int, default=1)
@argument("--seed", type=int, default=None)
def generate_tokens(args: argparse.Namespace) -> int:
    """Generate tokens with a saved model (one output line of ids per input)."""
    from plugformer.io import load

    model = load(args.checkpoint, registry=args.registry).eval()
    ids, padding = model.pad_inputs([_token_ids(text) for text in args.input])
    if model.kind == "lm":
        start = {"prompt_padding_mask": padding}
    else:
        start = {"src_key_padding_mask": padding, "bos_id": args.bos_id}
    out = model.generate(
        ids, args.max_new_tokens, eos_id=args.eos_id, temperature=args.temperature,
        top_k=args.top_k, top_p=args.top_p, beams=args.beams, seed=args.seed, **start,
    )
    for row in out.tolist():
        print(",".join(map(str, row)))
    return 0


@command("routes")
@argument("model", metavar="MODEL", help="a model spec using attn=bra(...), or a checkpoint from plugformer.save")
@argument("--length", "-L", type=int, default=256, help="tokens per input sequence (default 256)")
@argument("--input", "-i", default=None, help="token ids, comma-separated, instead of random ones")
@argument("--task", "-t", default=None,
          help="run 16 examples of this task instead, e.g. 'copy(length=32)' (the map averages them)")
@argument("--seed", type=int, default=0, help="seed of the random model weights and inputs")
@argument("--regions", type=int, default=None, help="draw at most this many regions per axis")
@argument("--out", "-o", default="routes.png", help="the PNG to write (default routes.png)")
def draw_routes(args: argparse.Namespace) -> int:
    """Draw which key regions each query region of every bra layer picked, as a PNG heat map."""
    import torch

    from plugformer.plugins.routes_plot import plot_routes, record_routes

    torch.manual_seed(args.seed)
    model = _model_from(args.model, args.registry).eval()
    if args.task:
        run = _task_example(args.task, model, args.registry, args.seed)
    else:
        run = _ids_example(args, model)
    with torch.no_grad(), record_routes(model) as routes:
        run(model)
    path = plot_routes(routes, args.out, n_regions=args.regions)
    print(f"routes of {len(routes)} bra layers written to {path}")
    return 0


def _task_example(task: str, model: Any, registry: Registry, seed: int) -> Callable[[Any], Any]:
    """A function running a model on 16 examples of ``task`` laid out for its kind."""
    from plugformer.compare.variants import make_task

    batch = make_task(task, registry=registry).batch(0, 16, seed=seed, kind=model.kind)
    return batch.logits


def _ids_example(args: argparse.Namespace, model: Any) -> Callable[[Any], Any]:
    """A function running a model on ``--input`` ids or ``--length`` random ones (source and
    target alike for encoder-decoders)."""
    import torch

    vocab = model.lm_head.out_features
    if args.input is not None:
        ids = torch.tensor([_token_ids(args.input)])
    elif args.length < 1:
        raise ValueError(f"--length must be at least 1, got {args.length}")
    else:
        ids = torch.randint(0, vocab, (1, args.length))
    if int(ids.max()) >= vocab:
        raise ValueError(f"--input holds token id {int(ids.max())}, but the model's vocab is {vocab}")
    return (lambda m: m(ids)) if model.kind == "lm" else (lambda m: m(ids, ids))


def _model_from(text: str, registry: Registry) -> "torch.nn.Module":
    """A saved model when ``text`` is an existing file, else the model a spec builds."""
    from pathlib import Path

    from plugformer.io import load
    from plugformer.registry.builder import build

    if Path(text).is_file():
        return load(text, registry=registry)
    return build(text, registry=registry)


def _token_ids(text: str) -> list[int]:
    try:
        ids = [int(piece) for piece in text.replace(" ", "").split(",") if piece]
    except ValueError:
        raise ValueError(f"--input must be comma-separated token ids, got {text!r}") from None
    if not ids:
        raise ValueError("--input is empty")
    return ids


def _register_external(name: str, help: str, module: str, arguments: str, handler: str) -> None:
    """A subcommand whose options and handler live in another module, imported when it runs."""
    import importlib

    def run(args: argparse.Namespace) -> int:
        return getattr(importlib.import_module(module), handler)(args)

    options = getattr(importlib.import_module(module), arguments)
    COMMANDS[name] = Command(name=name, help=help, handler=run, arguments=tuple(options))


_register_external(
    "compare", "Compare variants on a task: parameters, FLOPs, time, memory, accuracy.",
    "plugformer.compare.cli", "ARGUMENTS", "run_compare_command",
)
_register_external(
    "train", "Train a model: one process, or DDP / FSDP2 under torchrun.",
    "plugformer.train.cli", "ARGUMENTS", "run_train_command",
)


def find_kind(registry: Registry, name: str) -> str:
    """The kind of the one part called ``name``; an error if none or several kinds have one."""
    parts = registry.list()
    kinds = [part.kind for part in parts if part.name == name]
    if len(kinds) == 1:
        return kinds[0]
    if kinds:
        labels = ", ".join(f"{kind}:{name}" for kind in kinds)
        raise ValueError(
            f"{name!r} names parts of several kinds ({labels}); say which, e.g. {kinds[0]}:{name}"
        )
    close = close_matches(name, {part.name for part in parts})
    suggestions = [part.label for near in close for part in parts if part.name == near]
    raise UnknownPartError(None, name, [part.label for part in parts], suggestions=suggestions)


def _count(items: Sequence[Any], noun: str) -> str:
    return f"{len(items)} {noun}{'' if len(items) == 1 else 's'}"


def _cell(value: Any) -> str:
    return "-" if value is None else str(value)


if __name__ == "__main__":
    sys.exit(main())
