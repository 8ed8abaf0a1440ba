"""Tokens per second of generation with and without the KV cache, measured side by side.

    python benchmarks/generate.py                       # an encdec and an lm of d_model 256, 256 new tokens
    python benchmarks/generate.py --spec "gpt_tiny(attn=bra(region=32, topk=2))" --new 256

Each row generates ``--new`` tokens greedily for a batch, once with the cache and once
recomputing the whole prefix at every step; the repeats alternate between the two so that
machine noise hits both alike. The ratio cached / uncached is the number to read (target: >= 5x
at 256 new tokens). Both runs must produce the same tokens, which is checked.

``--decode-only`` measures cached decoding at a long context instead: after the prompt's prefill
(its time is the ``prefill s`` column), the ``--new`` - 1 greedy cached steps are timed on their
own, through the decoding session as ``generate`` runs them (caches reserved for every new
token), median of ``--repeats`` taken in turns by the specs. BRA's step routes from region means
kept in the cache and attends topk * region cached keys, fused's all of them (issue 15's target:
BRA at least 3x fused's tokens per second at a context of 8,192, head dim 64, 8 heads as
``benchmarks/attention.py``):

    python benchmarks/generate.py --decode-only --input-len 8192 --new 33 --batch 1 --threads 1 \
        --spec "gpt_tiny(d_model=512, heads=8, attn=fused)" \
        --spec "gpt_tiny(d_model=512, heads=8, attn=bra(region=64, topk=4))"

Three runs on 2 shared CPU cores (nice 5, one thread): fused 106-111 tok/s, bra 342-415
(3.2-3.8x); at the default d_model 64 (4 heads of 16), where a step is mostly per-operator
overhead, fused 557-616, bra 698-848 (1.2-1.4x). Before the cache was a buffer written in place
and BRA kept its region means, both were about 35 tok/s at d_model 512 (each step copied the
whole cache of every layer), and fused 365-396, bra 304-338 at d_model 64. The steps are timed
apart from the prefill: the time of generating ``--new`` tokens minus that of generating one,
as this measured before, is a difference of two prefill-dominated times (1-2 s against 0.1 s of
steps) and swung by 2x between runs.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import plugformer
from plugformer.core import generation


def timed_decode(model, inputs: torch.Tensor, new: int) -> tuple[float, float]:
    """Seconds of the prefill (the prompt, up to the logits of the first new token) and of the
    ``new`` - 1 greedy cached steps after it, as ``generate`` runs them."""
    extra = {"bos_id": 1} if model.kind == "encdec" else {}
    session = model.start_decoding(inputs, use_cache=True, **extra)
    session.reserve(new)
    start = time.perf_counter()
    logits = session.start()
    prefilled = time.perf_counter()
    for _ in range(new - 1):
        logits = session.step(generation.pick(logits))
    return prefilled - start, time.perf_counter() - prefilled


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
    if args.decode_only and args.new < 2:
        parser.error(f"--decode-only times the --new - 1 steps after the first token: --new must be >= 2, "
                     f"got {args.new}")
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
          f"{args.threads} thread(s), median of {args.repeats}, the specs taking turns")
    print(f"{'spec':<{width}} {'decode tok/s':>13} {'ms/step':>8} {'prefill s':>10}")
    models = []
    for spec in specs:
        torch.manual_seed(0)
        models.append(plugformer.build(spec, vocab=256, max_len=args.input_len + args.new + 8).eval())
    inputs = torch.randint(3, 256, (args.batch, args.input_len))
    prefill, steps = ([[] for _ in specs] for _ in range(2))
    with torch.no_grad():
        for _ in range(args.repeats):  # in turns, so that the machine's load hits every spec alike
            for i, model in enumerate(models):
                seconds = timed_decode(model, inputs, args.new)
                prefill[i].append(seconds[0])
                steps[i].append(seconds[1])
    for spec, times, prefills in zip(specs, steps, prefill):
        step = statistics.median(times) / (args.new - 1)
        print(f"{spec:<{width}} {args.batch / step:>13,.1f} {step * 1e3:>8.2f} {statistics.median(prefills):>10.2f}")


if __name__ == "__main__":
    main()
