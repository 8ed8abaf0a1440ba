"""``python -m plugformer.train SPEC ...``: ``plugformer train`` without the console script
(``torchrun --nproc-per-node N -m plugformer.train SPEC ...``)."""

from __future__ import annotations

import argparse
import sys

from plugformer.train.cli import add_train_arguments, run_train_command


def main(argv: "list[str] | None" = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m plugformer.train",
                                     description="Train a model, alone or under torchrun.")
    parser.add_argument("--traceback", action="store_true", help="show the full traceback of an error")
    add_train_arguments(parser)
    return run_train_command(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
