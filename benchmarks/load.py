"""Time plugformer.load of a saved transformer_base (issue 12, item 9).

    PYTHONPATH=. python benchmarks/load.py [--repeat 5]

Saves a transformer_base (about 60 M parameters with its 32k vocabularies) to a temporary
file, then prints the best and median wall time of ``load`` over ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

import plugformer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--spec", default="transformer_base")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = plugformer.build(args.spec)
    with tempfile.TemporaryDirectory() as tmp:
        path = plugformer.save(model, Path(tmp) / "model.safetensors")
        del model
        times = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            plugformer.load(path)
            times.append(time.perf_counter() - start)
    print(f"load {args.spec}: best {min(times):.3f} s, median {statistics.median(times):.3f} s over {args.repeat}")


if __name__ == "__main__":
    main()
