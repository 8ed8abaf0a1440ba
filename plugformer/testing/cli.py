"""``plugformer check``: run the conformance kit from the command line (exit 1 on a failure)."""

from __future__ import annotations

import argparse
import time

from plugformer.testing.result import CHECK_NAMES

ARGUMENTS = (
    (("spec",), {"nargs": "?", "metavar": "SPEC-OR-NAME", "help": "the part: a registered name or a spec, e.g. 'bra(region=8, topk=2)'"}),
    (("--kind", "-k"), {"help": "its kind (attention, positional, feedforward, norm, block) when the name is ambiguous"}),
    (("--plugin",), {"metavar": "NAME", "help": "check every part that the plugin NAME registers"}),
    (("--all",), {"action": "store_true", "help": "check every registered part (defaults of each)"}),
    (("--check", "-c"), {"action": "append", "choices": CHECK_NAMES, "metavar": "CHECK",
                         "help": f"run only this check (repeatable): {', '.join(CHECK_NAMES)}"}),
)

EPILOG = """examples:
  plugformer check bra                                 every check on bra with its defaults
  plugformer check 'bra(region=8, topk=2)' --kind attention -c causality -c cached_decoding
  plugformer check --plugin example                    every part of the installed plugin 'example'
  plugformer check --all                               every registered part (the CI gate)"""


def run_check_command(args: argparse.Namespace) -> int:
    """Run the kit on the parts the arguments name; print one table row per check."""
    import torch

    from plugformer.cli import print_table
    from plugformer.registry.resolver import PART_KINDS
    from plugformer.testing.runner import run_checks

    registry = args.registry
    chosen = sum(bool(x) for x in (args.spec, args.plugin, args.all))
    if chosen != 1:
        raise ValueError("name one part (SPEC-OR-NAME), or use --plugin NAME or --all (exactly one of them)")
    if args.spec:
        targets = [(args.spec, args.kind)]
    else:
        parts = [p for kind in PART_KINDS for p in registry.list(kind)]
        if args.plugin:
            parts = [p for p in parts if args.plugin in (p.plugin, p.source)]
            if not parts:
                known = sorted({p.plugin for p in registry.list() if p.plugin})
                raise LookupError(f"plugin {args.plugin!r} registers no parts; plugins with parts: {', '.join(known)}")
        targets = [(p.name, p.kind) for p in parts]
    torch.set_num_threads(1)  # the kit's models are tiny: one thread beats two that wait for each other
    start, rows, failures, skipped = time.perf_counter(), [], 0, 0
    for spec, kind in targets:
        for timed in run_checks(spec, kind, registry=registry, checks=args.check):
            result = timed.result
            failures += result.failed
            skipped += result.status == "not_applicable"
            label = spec if kind is None else f"{kind}:{spec}"
            rows.append((label, result.name, result.status.replace("_", " "), f"{timed.seconds:.2f}s", result.message))
    print_table(("part", "check", "result", "time", "message"), rows)
    seconds = time.perf_counter() - start
    print(f"\n{len(rows)} checks on {len(targets)} part(s) in {seconds:.1f}s: {len(rows) - failures - skipped} passed, "
          f"{failures} failed, {skipped} not applicable")
    return 1 if failures else 0
