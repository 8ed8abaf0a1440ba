"""Attention kernels against each other: dense, fused (SDPA) and bra(region=64, topk=4).

One attention call on already-projected heads, batch 1, 8 heads, head dim 64, float32, at
N = 512 ... 16384 tokens (self-attention, Lq = Lk = N; ``--causal`` for decoder attention). The
heads come as ``MultiHeadAttention`` gives them to its kernel: (B, H, N, Dh) views of
(B, N, H, Dh) projections.

* forward: ``torch.no_grad()``, as in inference.
* forward+backward: forward with grad, then ``out.backward(g)`` for a fixed random ``g``.
* time: median of ``--repeats`` runs; the variants are interleaved (dense, fused, bra, dense,
  ...) so that drifts in machine load hit them alike. Each variant is warmed up once first.
* peak memory: each (variant, N) runs forward+backward once in a fresh subprocess, after one
  warm-up call at 512 tokens (lazy imports are not the call's memory). On CPU,
  after the inputs exist, the process's peak resident set is reset (``/proc/self/clear_refs``)
  and the peak after the call (``VmHWM``) minus the resident set before it is reported: the
  memory the call needs on top of its inputs (saved tensors, gradients, workspace), counted by
  the kernel of the OS, so every allocation counts whoever makes it (``tracemalloc`` does not
  see torch's). The subprocess runs with glibc's ``MALLOC_MMAP_THRESHOLD_`` fixed at 64 KiB:
  otherwise glibc raises its mmap threshold after the first large free and keeps later
  multi-MiB blocks in the heap, so the resident set would still count tensors already freed;
  fixed, every tensor-sized block returns to the OS when freed, for every variant alike.
  Without ``clear_refs``, ``ru_maxrss`` is used (an upper bound). On CUDA,
  ``torch.cuda.max_memory_allocated`` over the call.
* dense is skipped above 4096 tokens (its (B, H, N, N) scores alone are 8 GiB at 16384).

``bra`` is the kernel with its default paths: bidirectional, region routing over gathered tiles
(``sparse.py``); ``--causal``, token routing in MoBA's grouped layout from 128 tokens
(``grouped.py``, each key region attended by exactly the queries that chose it).

Targets (CPU, issue 15, forward+backward): causal, crossover with fused at N <= 1024 and at
least 8x faster at 8192; bidirectional, crossover at N <= 1024 and at least 16x at 8192; peak
memory of bra within 1.5x of fused at 16384. Met: the bidirectional crossover and the memory.
Not met (0.63x, 3.9x, 12.5x on 2 idle cores): ``benchmarks/bra_ceiling.py`` shows them beyond what
PyTorch's CPU kernels reach on 64-key blocks (README, Long context). ``--region``/``--topk``
try other shapes. On a loaded machine, ``--threads 1`` and the load
average printed with the table.

    python benchmarks/attention.py                  # full run, several minutes on 2 cores
    python benchmarks/attention.py --quick          # 512-2048, 2 repeats
    python benchmarks/attention.py --causal --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from plugformer.plugins.bra import BiLevelRoutingAttention

HEADS, HEAD_DIM, BATCH = 8, 64, 1
LENGTHS = (512, 1024, 2048, 4096, 8192, 16384)
QUICK_LENGTHS = (512, 1024, 2048)
DENSE_LIMIT = 4096
VARIANTS = ("dense", "fused", "bra")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--causal", action="store_true", help="causal (decoder) attention")
    parser.add_argument("--quick", action="store_true", help=f"only N = {QUICK_LENGTHS}, 2 repeats")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per variant, N and mode")
    parser.add_argument("--lengths", type=lambda s: tuple(int(x) for x in s.split(",")), default=None)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--region", type=int, default=64, help="bra's region size (tokens)")
    parser.add_argument("--topk", type=int, default=4, help="bra's regions per query")
    parser.add_argument("--memory-case", nargs=2, metavar=("VARIANT", "N"), help=argparse.SUPPRESS)
    return parser.parse_args()


def kernel(variant: str, args: argparse.Namespace) -> Callable:
    if variant == "dense":
        return dense
    if variant == "fused":
        return fused
    bra = BiLevelRoutingAttention(heads=HEADS, head_dim=HEAD_DIM, region=args.region, topk=args.topk)
    return lambda q, k, v, causal: bra(q, k, v, causal=causal)


def dense(q, k, v, causal: bool):
    """softmax(q k^T / sqrt(d)) v, written out."""
    scores = q @ k.transpose(-1, -2) * HEAD_DIM**-0.5
    if causal:
        n = q.shape[-2]
        future = torch.ones(n, n, dtype=torch.bool, device=q.device).triu(1)
        scores = scores.masked_fill(future, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def fused(q, k, v, causal: bool):
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal)


def inputs(n: int, device: str, seed: int = 0):
    """q, k, v and the output gradient, (B, H, N, Dh) views of (B, N, H, Dh) tensors: the layout
    in which multi-head attention hands heads to a kernel (a free split of its projections)."""
    generator = torch.Generator().manual_seed(seed)
    shape = (BATCH, n, HEADS, HEAD_DIM)
    return tuple(torch.randn(shape, generator=generator).to(device).transpose(1, 2) for _ in range(4))


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run(attend: Callable, q, k, v, grad, causal: bool, backward: bool) -> None:
    if not backward:
        with torch.no_grad():
            attend(q, k, v, causal)
        return
    q, k, v = (x.detach().requires_grad_() for x in (q, k, v))
    attend(q, k, v, causal).backward(grad)


def timed(attend: Callable, case, causal: bool, backward: bool, device: str) -> float:
    sync(device)
    start = time.perf_counter()
    run(attend, *case, causal, backward)
    sync(device)
    return time.perf_counter() - start


def variants_for(n: int) -> list[str]:
    return [v for v in VARIANTS if v != "dense" or n <= DENSE_LIMIT]


def time_all(lengths, args) -> dict:
    """{(variant, n): (forward seconds, forward+backward seconds)}, medians."""
    results = {}
    warm = set()
    for n in lengths:
        case = inputs(n, args.device)
        samples = {}
        for variant in variants_for(n):
            if variant not in warm:
                run(kernel(variant, args), *inputs(256, args.device), args.causal, backward=True)
                warm.add(variant)
        attends = {variant: kernel(variant, args) for variant in variants_for(n)}
        for _ in range(args.repeats):
            for variant, attend in attends.items():
                forward = timed(attend, case, args.causal, False, args.device)
                both = timed(attend, case, args.causal, True, args.device)
                samples.setdefault(variant, []).append((forward, both))
        for variant, runs in samples.items():
            results[variant, n] = tuple(statistics.median(r[i] for r in runs) for i in (0, 1))
        print(f"  timed N={n}", file=sys.stderr, flush=True)
    return results


def memory_case(variant: str, n: int, args) -> int:
    """Run one forward+backward here and return the extra peak memory in bytes.

    The variant first runs once at 512 tokens, so that what its first call loads for good (the
    custom-operator machinery BRA's paths register through: about 70 MB of Python modules on
    first use) is not counted as the memory of the call."""
    attend = kernel(variant, args)
    run(attend, *inputs(512, args.device), args.causal, backward=True)
    case = inputs(n, args.device)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        run(attend, *case, args.causal, backward=True)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    before = _status_kib("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        peak = None
    except OSError:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    run(attend, *case, args.causal, backward=True)
    after = _status_kib("VmHWM") if peak is None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (after - before) * 1024


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def memory_all(lengths, args) -> dict:
    results = {}
    for n in lengths:
        for variant in variants_for(n):
            command = [sys.executable, __file__, "--memory-case", variant, str(n), "--device", args.device,
                       "--threads", str(args.threads), "--region", str(args.region), "--topk", str(args.topk)]
            command += ["--causal"] if args.causal else []
            env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(64 * 1024))
            done = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
            results[variant, n] = json.loads(done.stdout.strip().splitlines()[-1])["peak_bytes"]
        print(f"  measured memory N={n}", file=sys.stderr, flush=True)
    return results


def table(lengths, times: dict, memory: Optional[dict]) -> str:
    def ms(variant, n, i):
        return f"{times[variant, n][i] * 1e3:9.1f}" if (variant, n) in times else f"{'-':>9}"

    def mib(variant, n):
        return f"{memory[variant, n] / 2**20:8.1f}" if memory and (variant, n) in memory else f"{'-':>8}"

    head = (
        f"{'N':>6} | {'fwd ms':^29} | {'fwd+bwd ms':^29} | {'fused/bra':^11} | "
        f"{'peak MiB (fwd+bwd)':^26} | bra/fused\n"
        f"{'':>6} | {'dense':>9}{'fused':>10}{'bra':>10} | {'dense':>9}{'fused':>10}{'bra':>10} | "
        f"{'fwd':>5}{'f+b':>6} | {'dense':>8}{'fused':>9}{'bra':>9} | {'memory':>9}"
    )
    lines = [head, "-" * len(head.splitlines()[1])]
    for n in lengths:
        speed = [times["fused", n][i] / times["bra", n][i] for i in (0, 1)]
        ratio = f"{memory['bra', n] / memory['fused', n]:9.2f}" if memory else f"{'-':>9}"
        lines.append(
            f"{n:>6} | {ms('dense', n, 0)} {ms('fused', n, 0)} {ms('bra', n, 0)} | "
            f"{ms('dense', n, 1)} {ms('fused', n, 1)} {ms('bra', n, 1)} | "
            f"{speed[0]:5.2f}{speed[1]:6.2f} | {mib('dense', n)} {mib('fused', n)} {mib('bra', n)} | {ratio}"
        )
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_case:
        variant, n = args.memory_case
        print(json.dumps({"peak_bytes": memory_case(variant, int(n), args)}))
        return
    lengths = args.lengths or (QUICK_LENGTHS if args.quick else LENGTHS)
    repeats = 2 if args.quick and args.repeats == 3 else args.repeats
    args.repeats = repeats
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"attention, batch {BATCH}, {HEADS} heads, head dim {HEAD_DIM}, float32, {args.device}, "
        f"{torch.get_num_threads()} threads, {'causal' if args.causal else 'bidirectional'}, "
        f"median of {repeats}; bra = bra(region={args.region}, topk={args.topk}); load average at start {load:.1f}",
        flush=True,
    )
    times = time_all(lengths, args)
    memory = None if args.no_memory else memory_all(lengths, args)
    print(table(lengths, times, memory))
    if hasattr(os, "getloadavg"):
        print(f"load average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
