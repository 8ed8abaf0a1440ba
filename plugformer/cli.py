# PYTHON_ARGCOMPLETE_OK
"""The ``plugformer`` command.

Each subcommand is one function taking the parsed arguments and returning an exit code,
declared with :func:`command` and its options with :func:`argument`::

    @command("hello")
    @argument("who", help="whom to greet")
    def hello(args: argparse.Namespace) -> int:
        '''Say hello.'''
        print(f"hello {args.who}")
        return 0

``args.registry`` is the registry to use. Plugins add commands through the
``plugformer_register_commands(commands)`` hook (:class:`Commands`), the way ``routes`` comes
from the ``bra`` plugin. Errors a user can cause (a bad spec, an unknown part,
a bad value) print one line on stderr and exit with status 2, as do usage errors; a command
that fails (a check, a run) exits with status 1; ``--traceback`` shows errors whole. Each
command's ``--help`` ends with examples (its epilog) and shows every option's default.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Optional, Sequence

from plugformer import __version__
from plugformer.cli_parser import HelpFormatter, Parser, add_arguments, autocomplete
from plugformer.cli_commands import (  # noqa: F401  (Commands, plugin_commands: public here too)
    COMMANDS, Command, Commands, argument, command, plugin_commands,
)
from plugformer.registry.discovery import PluginError
from plugformer.registry.parts import KINDS, close_matches
from plugformer.registry.registry import Registry, UnknownPartError, default_registry

#: Errors caused by what the user typed (``SpecError`` is a ``ValueError``): reported in one
#: line, exit status 2, no traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, LookupError, PluginError)


def build_parser(commands: Optional[dict[str, Command]] = None) -> argparse.ArgumentParser:
    """The argument parser with these subcommands (default: the CLI's own)."""
    parser = Parser(
        prog="plugformer",
        description="Transformer parts behind a plugin registry.",
        epilog="'plugformer COMMAND --help' shows a command's options, defaults and examples.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--traceback", action="store_true", help="show the full traceback of an error"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for cmd in (COMMANDS if commands is None else commands).values():
        sub = subparsers.add_parser(
            cmd.name, help=cmd.help, description=cmd.help, epilog=cmd.epilog or None,
            formatter_class=HelpFormatter,
        )
        add_arguments(sub, cmd.arguments)
        sub.set_defaults(handler=cmd.handler)
    return parser


def main(argv: Optional[Sequence[str]] = None, *, registry: Optional[Registry] = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``) and return its exit status.

    ``registry`` replaces the default registry (for tests); its plugins' commands join the
    CLI's own.
    """
    registry = registry if registry is not None else default_registry()
    parser = build_parser(plugin_commands(registry))
    autocomplete(parser, registry)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    args.registry = registry
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


@command("list", epilog="""examples:
  plugformer list                          # every part: kind, name, summary
  plugformer list attention                # only attention kernels
  plugformer list -p '*bra*'               # wildcard on the name, any kind""")
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


@command("describe", epilog="""examples:
  plugformer describe bra                  # arguments, types, defaults, capabilities, plugin
  plugformer describe positional:rope      # kind:name, needed when two kinds share a name
  plugformer describe gpt_tiny             # a model preset""")
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


@command("plugins", epilog="""examples:
  plugformer plugins                       # loaded plugins with versions, and failures
  plugformer plugins --verbose             # with the traceback of each failure
  PLUGFORMER_DISABLE_PLUGINS=example plugformer plugins""")
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


@command("build", epilog="""examples:
  plugformer build transformer_base
  plugformer build "transformer_tiny(attn=bra(region=8, topk=2))"
  plugformer build "gpt_tiny(pe=rope)"     # parameters per part; nothing is allocated""")
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


@command("generate", epilog="""examples:
  plugformer train "transformer_tiny(attn=bra(region=4, topk=2))" --task "copy(length=32)" \\
      --steps 500 --lr 5e-3 --out runs/copy          # writes runs/copy/model.safetensors
  plugformer generate runs/copy/model.safetensors --input 5,6,7,8 --max-new-tokens 8
  plugformer generate runs/copy/model.safetensors -i 5,6,7 -i 9,10 --beams 4 --eos-id 2
  plugformer generate runs/copy/model.safetensors -i 5,6,7 -n 8 --temperature 0.8 --top-p 0.9 --seed 0""")
@argument("checkpoint", metavar="CHECKPOINT", help="a file written by plugformer.save")
@argument("--input", "-i", action="append",
          help="token ids, comma-separated (repeat for a batch): the source (encdec) or prompt (lm)")
@argument("--text", default=None,
          help="a text prompt (lm models saved with their tokenizer, e.g. by plugformer train on "
               "a text task): prints the prompt and what the model writes after it")
@argument("--max-new-tokens", "-n", type=int, default=32)
@argument("--bos-id", type=int, default=1, help="first decoder token of encdec models")
@argument("--eos-id", type=int, default=None)
@argument("--temperature", type=float, default=0.0, help="0 = greedy")
@argument("--top-k", type=int, default=None)
@argument("--top-p", type=float, default=None)
@argument("--beams", type=int, default=1)
@argument("--seed", type=int, default=None)
def generate_tokens(args: argparse.Namespace) -> int:
    """Generate with a saved model: one line of ids per --input, or decoded text for --text."""
    from plugformer.io import load

    if (args.input is None) == (args.text is None):
        raise ValueError("give either --input (token ids) or --text (a prompt), "
                         + ("not both" if args.input else "got neither"))
    model = load(args.checkpoint, registry=args.registry).eval()
    if args.text is not None:
        return _generate_text(model, args)
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


def _generate_text(model: Any, args: argparse.Namespace) -> int:
    from plugformer.textgen import generate_text

    if args.beams != 1 or args.eos_id is not None:
        raise ValueError("--text samples or decodes greedily up to end-of-text: drop --beams "
                         "and --eos-id, or give --input token ids")
    if getattr(model, "tokenizer", None) is None:
        raise ValueError(f"{args.checkpoint} was saved without a tokenizer, so --text cannot "
                         "encode a prompt: give --input token ids, or save the model with "
                         "plugformer.save(model, path, tokenizer=task.tokenizer)")
    print(generate_text(model, args.text, max_new_tokens=args.max_new_tokens,
                        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                        seed=args.seed, include_prompt=True))
    return 0


def _token_ids(text: str) -> list[int]:
    try:
        ids = [int(piece) for piece in text.replace(" ", "").split(",") if piece]
    except ValueError:
        raise ValueError(f"--input must be comma-separated token ids, got {text!r}") from None
    if not ids:
        raise ValueError("--input is empty")
    return ids


def _register_external(name: str, help: str, module: str, arguments: str, handler: str, epilog: str = "") -> None:
    """A subcommand whose options and handler live in another module, imported when it runs."""
    import importlib

    def run(args: argparse.Namespace) -> int:
        return getattr(importlib.import_module(module), handler)(args)

    options = getattr(importlib.import_module(module), arguments)
    text = getattr(importlib.import_module(module), epilog) if epilog else ""
    COMMANDS[name] = Command(name=name, help=help, handler=run, arguments=tuple(options), epilog=text)


_register_external(
    "compare", "Compare variants on a task: parameters, FLOPs, time, memory, accuracy.",
    "plugformer.compare.cli", "ARGUMENTS", "run_compare_command", "EPILOG",
)
_register_external(
    "report", "Rebuild report.html of a comparison from its runs.jsonl.",
    "plugformer.compare.cli", "REPORT_ARGUMENTS", "run_report_command", "REPORT_EPILOG",
)
_register_external(
    "train", "Train a model: one process, or DDP / FSDP2 under torchrun.",
    "plugformer.train.cli", "ARGUMENTS", "run_train_command", "EPILOG",
)
_register_external("check", "Run the conformance kit on a part, a plugin's parts or all parts (exit 1 on a failure).",
                   "plugformer.testing.cli", "ARGUMENTS", "run_check_command", "EPILOG")
_register_external("export", "Write a checkpoint as a Hugging Face model directory (Llama, GPT-2).",
                   "plugformer.interop.cli", "EXPORT_ARGUMENTS", "run_export_command", "EXPORT_EPILOG")
_register_external("import", "Read a Hugging Face model directory into a checkpoint (Llama, GPT-2).",
                   "plugformer.interop.cli", "IMPORT_ARGUMENTS", "run_import_command", "IMPORT_EPILOG")


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
