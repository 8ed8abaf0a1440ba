"""Tokens per second of generation with and without the KV cache, measured side by side.

    python benchmarks/generate.py                       # an encdec and an lm of d_model 256, 256 new tokens
    python benchmarks/generate.py --spec "gpt_tiny(attn=bra(region=32, topk=2))" --new 256

Each row generates ``--new`` tokens greedily for a batch, once with the cache and once
recomputing the whole prefix at every step; the repeats alternate between the two so that
machine noise hits both alike. The ratio cached / uncached is the number to read (target: >= 5x
at 256 new tokens). Both runs must produce the same tokens, which is checked.

``--decode-only`` measures cached decoding at a long context instead: the time of generating
``--new`` tokens minus that of generating one (the prefill), per decoded token, for each spec;
BRA's step attends topk * region cached keys, fused's all of them (issue 15's target: BRA at
least 3x fused's tokens per second at a context of 8,192):

    python benchmarks/generate.py --decode-only --input-len 8192 --new 33 --batch 1 --threads 1 \
        --spec "gpt_tiny(attn=fused)" --spec "gpt_tiny(attn=bra(region=64, topk=4))"
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
    parser.add_argument("--decode-only", action="store_true", help="cached decode tokens/s after the prompt")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    specs = args.spec or [  # big enough that compute, not Python, sets the pace
        "transformer_tiny(d_model=256, heads=4, layers=3, ffn=relu(d_ff=1024))",
        "gpt_tiny(d_model=256, heads=4, layers=4, ffn=gelu(d_ff=1024))",
    ]
    width = max(len(spec) for spec in specs)
    if args.decode_only:
        decode_only(specs, args, width)
        return
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


def decode_only(specs: list[str], args: argparse.Namespace, width: int) -> None:
    print(f"batch {args.batch}, context {args.input_len}, {args.new - 1} cached decode steps, greedy, "
          f"{args.threads} thread(s), median of {args.repeats}")
    print(f"{'spec':<{width}} {'decode tok/s':>13} {'prefill s':>10}")
    for spec in specs:
        torch.manual_seed(0)
        model = plugformer.build(spec, vocab=256, max_len=args.input_len + args.new + 8).eval()
        inputs = torch.randint(3, 256, (args.batch, args.input_len))
        prefill, full = [], []
        with torch.no_grad():
            for _ in range(args.repeats):
                prefill.append(timed_generate(model, inputs, 1, True)[0])
                full.append(timed_generate(model, inputs, args.new, True)[0])
        steps = statistics.median(full) - statistics.median(prefill)
        rate = args.batch * (args.new - 1) / steps
        print(f"{spec:<{width}} {rate:>13,.1f} {statistics.median(prefill):>10.2f}")


if __name__ == "__main__":
    main()
