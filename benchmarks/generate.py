"""Tokens per second of generation with and without the KV cache, measured side by side.

    python benchmarks/generate.py                       # an encdec and an lm of d_model 256, 256 new tokens
    python benchmarks/generate.py --spec "gpt_tiny(attn=bra(region=32, topk=2))" --new 256

Each row generates ``--new`` tokens greedily for a batch, once with the cache and once
recomputing the whole prefix at every step; the repeats alternate between the two so that
machine noise hits both alike. The ratio cached / uncached is the number to read (target: >= 5x
at 256 new tokens). Both runs must produce the same tokens, which is checked.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import plugformer


def timed_generate(model, inputs: torch.Tensor, new: int, use_cache: bool) -> tuple[float, torch.Tensor]:
    extra = {"bos_id": 1} if model.kind == "encdec" else {}
    start = time.perf_counter()
    out = model.generate(inputs, new, use_cache=use_cache, **extra)
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", action="append", help="model spec (repeatable)")
    parser.add_argument("--new", type=int, default=256, help="new tokens per sequence")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--input-len", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    specs = args.spec or [  # big enough that compute, not Python, sets the pace
        "transformer_tiny(d_model=256, heads=4, layers=3, ffn=relu(d_ff=1024))",
        "gpt_tiny(d_model=256, heads=4, layers=4, ffn=gelu(d_ff=1024))",
    ]
    width = max(len(spec) for spec in specs)
    print(f"batch {args.batch}, {args.input_len} input tokens, {args.new} new tokens, greedy, "
          f"{args.threads} thread(s), median of {args.repeats}")
    print(f"{'spec':<{width}} {'cached tok/s':>13} {'uncached tok/s':>15} {'ratio':>7}")
    for spec in specs:
        torch.manual_seed(0)
        model = plugformer.build(spec, vocab=256, max_len=args.input_len + args.new + 8).eval()
        inputs = torch.randint(3, 256, (args.batch, args.input_len))
        times = {True: [], False: []}
        outputs = {}
        for _ in range(args.repeats):
            for use_cache in (True, False):
                seconds, outputs[use_cache] = timed_generate(model, inputs, args.new, use_cache)
                times[use_cache].append(seconds)
        if not torch.equal(outputs[True], outputs[False]):
            raise SystemExit(f"{spec}: cached and uncached generation disagree")
        tokens = args.batch * outputs[True].shape[1]
        cached, uncached = (tokens / statistics.median(times[c]) for c in (True, False))
        print(f"{spec:<{width}} {cached:>13,.0f} {uncached:>15,.0f} {cached / uncached:>6.1f}x")


if __name__ == "__main__":
    main()
