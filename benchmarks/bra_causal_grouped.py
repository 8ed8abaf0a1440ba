"""Causal token-routed BRA grouped by key region against fused causal attention, fwd+bwd on CPU.

Batch 1, 8 heads of 64, region 64, topk 4, float32, 2 threads. Kernels, timed round-robin
(median and minimum of ``--repeats`` after one warm-up round):

* ``sdpa``: ``F.scaled_dot_product_attention(is_causal=True)``;
* ``grouped``: :func:`grouped_causal_attention` on a routing computed beforehand;
* ``grouped+route``: the same with the routing below inside the timed call (mean key per
  region, q . k_mean summed over heads for strictly earlier regions, top-(k-1) plus the own region);
* ``bra``: today's kernel, ``build_part("attention", "bra(region=64, topk=4)", causal=True)``
  (routing included).

Peak memory: each kernel runs once (fwd+bwd) in a fresh subprocess; the figure is
``ru_maxrss`` after the call minus the resident set just before it (inputs already built), so it
is what the call itself adds, torch's allocations included (tracemalloc does not see them).

    python benchmarks/bra_causal_grouped.py                     # times, N = 1024 .. 16384
    python benchmarks/bra_causal_grouped.py --memory            # peak memory per kernel
    python benchmarks/bra_causal_grouped.py --rows 32 64 128    # tile size sweep (grouped only)
    python benchmarks/bra_causal_grouped.py --threads 1         # steadier on a shared machine

Measured 2026-11-29 on 2 shared CPU cores under load average 6-9 (five sessions testing beside
it), 1 thread, sdpa time / kernel time (median), N = 1024 / 2048 / 4096 / 8192 / 16384:
grouped 0.73-0.76 / 1.1-1.2 / 1.7-2.0 / 3.1-3.7 / 6.3; grouped+route 0.73 / 1.05 / 1.7-1.9 /
3.4-3.5 / 6.9; bra today 0.32 / 0.4 / 0.85 / 1.9 / 3.6. With 2 threads under that load a
parallel op waits ~18 ms for its second worker now and then, so 2-thread medians scattered
2-5x run to run. Peak memory added by one call (MiB, sdpa / grouped): 125 / 161 at 8192,
195 / 240 at 16384 (1.23x).
"""

from __future__ import annotations

import argparse
import math
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from plugformer.plugins.bra.grouped import grouped_causal_attention

HEADS, HEAD_DIM, REGION, TOPK = 8, 64, 64, 4
LENGTHS = (1024, 2048, 4096, 8192, 16384)
KERNELS = ("sdpa", "grouped", "grouped+route", "bra")


def simple_route(q: torch.Tensor, k: torch.Tensor, *, region: int, topk: int) -> torch.Tensor:
    """(B, H, L, D), (B, Hkv, L, D) -> (B, L, min(topk, n)) causal token routing, slot 0 own, -1 empty."""
    with torch.no_grad():
        b, h, length, d = q.shape
        hkv, n = k.shape[1], math.ceil(length / region)
        k_pad = F.pad(k, (0, 0, 0, n * region - length))
        counts = torch.full((n,), float(region))
        counts[-1] = length - region * (n - 1)
        means = k_pad.view(b, hkv, n, region, d).sum(3) / counts[:, None]  # (B, Hkv, n, D)
        summed = q.view(b, hkv, h // hkv, length, d).sum(2)  # (B, Hkv, L, D)
        gate = torch.einsum("bhld,bhnd->bln", summed, means)  # (B, L, n)
        own = torch.arange(length) // region
        gate = gate.masked_fill(torch.arange(n)[None, :] >= own[:, None], -math.inf)
        slots = min(topk, n)
        values, index = gate.topk(slots - 1, dim=-1)
        others = index.masked_fill(values == -math.inf, -1)
        return torch.cat([own.expand(b, length)[..., None], others], dim=-1)


def make_call(name: str, length: int, rows: int = 128):
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, HEADS, length, HEAD_DIM, requires_grad=True) for _ in range(3))
    grad = torch.randn(1, HEADS, length, HEAD_DIM)
    chosen = simple_route(q, k, region=REGION, topk=TOPK)
    if name == "sdpa":
        def attend():
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    elif name == "grouped":
        def attend():
            return grouped_causal_attention(q, k, v, chosen, region=REGION, rows=rows)
    elif name == "grouped+route":
        def attend():
            routes = simple_route(q, k, region=REGION, topk=TOPK)
            return grouped_causal_attention(q, k, v, routes, region=REGION, rows=rows)
    elif name == "bra":
        import plugformer

        kernel = plugformer.build_part("attention", f"bra(region={REGION}, topk={TOPK})",
                                       d_model=HEADS * HEAD_DIM, heads=HEADS, causal=True)

        def attend():
            return kernel(q, k, v, causal=True)
    else:
        raise ValueError(f"kernel must be one of {', '.join(KERNELS)}; got {name!r}")

    def call() -> None:
        attend().backward(grad)
        q.grad = k.grad = v.grad = None

    return call


def time_round_robin(calls, *, repeats: int) -> tuple[list[float], list[float]]:
    """(median, minimum) seconds per call, one warm-up round, then ``repeats`` round-robin rounds.

    Other processes on a shared machine stall a multi-threaded op now and then (a worker thread
    waits for a core), which adds time; the minimum is the least disturbed sample.
    """
    samples: list[list[float]] = [[] for _ in calls]
    for round_ in range(repeats + 1):
        for call, kept in zip(calls, samples):
            start = time.perf_counter()
            call()
            if round_:
                kept.append(time.perf_counter() - start)
    return [statistics.median(s) for s in samples], [min(s) for s in samples]


def resident_kib() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() // 1024


def peak_one(name: str, length: int) -> None:
    """Run in a subprocess: print the MiB one fwd+bwd call adds to the peak resident set."""
    torch.set_num_threads(2)
    call = make_call(name, length)
    before = resident_kib()
    call()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print((peak - before) / 1024)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=list(LENGTHS))
    parser.add_argument("--kernels", nargs="+", default=list(KERNELS), choices=KERNELS)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--memory", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rows", type=int, nargs="+")
    parser.add_argument("--peak-one", nargs=2, metavar=("KERNEL", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peak_one:
        return peak_one(args.peak_one[0], int(args.peak_one[1]))
    torch.set_num_threads(args.threads)
    print(f"fwd+bwd, batch 1, {HEADS} heads x {HEAD_DIM}, region {REGION}, topk {TOPK}, float32, "
          f"{args.threads} threads; loadavg {open('/proc/loadavg').read().split()[:3]}")
    if args.rows:
        print(f"{'N':>6} " + " ".join(f"{'rows=' + str(r):>10}" for r in args.rows) + "  (median ms)")
        for length in args.lengths:
            calls = [make_call("grouped", length, r) for r in args.rows]
            times, _ = time_round_robin(calls, repeats=args.repeats)
            print(f"{length:>6} " + " ".join(f"{t * 1e3:>10.1f}" for t in times))
        return
    if args.memory:
        print(f"{'N':>6} " + " ".join(f"{k + ' MiB':>18}" for k in args.kernels))
        for length in args.lengths:
            peaks = [subprocess.run([sys.executable, __file__, "--peak-one", k, str(length)], check=True,
                                    capture_output=True, text=True).stdout.strip() for k in args.kernels]
            print(f"{length:>6} " + " ".join(f"{float(p):>18.0f}" for p in peaks))
        return
    print("ms as median / min; ratios sdpa / kernel from the medians (and from the minima)")
    print(f"{'N':>6} " + " ".join(f"{k:>18}" for k in args.kernels)
          + "".join(f"{'sdpa/' + k:>22}" for k in args.kernels[1:]))
    for length in args.lengths:
        median, least = time_round_robin([make_call(k, length) for k in args.kernels], repeats=args.repeats)
        print(f"{length:>6} " + " ".join(f"{m * 1e3:>9.1f} /{n * 1e3:>7.1f}" for m, n in zip(median, least))
              + "".join(f"{median[0] / m:>13.2f} ({least[0] / n_:>5.2f})"
                        for m, n_ in zip(median[1:], least[1:])),
              flush=True)
    print(f"loadavg after: {open('/proc/loadavg').read().split()[:3]}")


if __name__ == "__main__":
    main()
