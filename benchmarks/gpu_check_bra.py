"""bra on a CUDA GPU: the flex_attention path against the gathered-tiles path, and timings.

For each case, ``bra(backend="flex")`` (compiled ``flex_attention`` with the routing's block
mask) and ``bra(backend="torch")`` (the tiles path, run on the GPU) get the same inputs; the
script prints the largest absolute difference of the outputs and of the input gradients, then
the median forward and forward+backward times of flex, torch and SDPA (``fused``, exact
attention), and the peak memory (``torch.cuda.max_memory_allocated``) of one forward+backward.
The first flex call of each shape compiles (tens of seconds); it is not timed.

    python benchmarks/gpu_check_bra.py             # about 2-4 minutes on one GPU
    python benchmarks/gpu_check_bra.py --quick     # one small case
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from plugformer.core.attention import repeat_kv
from plugformer.plugins.bra import BiLevelRoutingAttention

CASES = [  # (N, kv heads, causal, padded keys)
    (4096, 8, False, False),
    (4096, 8, True, False),
    (4096, 2, False, True),
    (4096, 2, True, True),
    (16384, 8, False, False),
    (16384, 8, True, False),
]


def inputs(n: int, kv_heads: int, padded: bool, dtype: torch.dtype):
    generator = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(1, 8, n, 64, device="cuda", dtype=dtype, generator=generator)
    k, v = (
        torch.randn(1, kv_heads, n, 64, device="cuda", dtype=dtype, generator=generator) for _ in range(2)
    )
    mask = None
    if padded:
        mask = (torch.arange(n, device="cuda") < n - n // 5)[None, None, None, :]
    return q, k, v, mask


def forward_backward(attend, q, k, v, grad):
    q, k, v = (x.detach().requires_grad_() for x in (q, k, v))
    out = attend(q, k, v)
    out.backward(grad)
    return out.detach(), [x.grad for x in (q, k, v)]


def median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def peak_mib(fn) -> float:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--bf16", action="store_true")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device")
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, {dtype}")
    header = f"{'N':>6} {'Hkv':>3} {'causal':>6} {'pad':>4} | {'max|out|':>9} {'max|grad|':>9} | " \
             f"{'fwd ms flex/torch/sdpa':>24} | {'f+b ms flex/torch/sdpa':>24} | {'MiB flex/torch/sdpa':>21}"
    print(header)
    for n, kv_heads, causal, padded in CASES[:1] if args.quick else CASES:
        q, k, v, mask = inputs(n, kv_heads, padded, dtype)
        grad = torch.randn_like(q)
        attends = {}
        for backend in ("flex", "torch"):
            kernel = BiLevelRoutingAttention(heads=8, head_dim=64, region=64, topk=4, backend=backend)
            attends[backend] = lambda q, k, v, kernel=kernel: kernel(q, k, v, mask=mask, causal=causal)

        def sdpa(q, k, v):
            allowed = mask
            if causal:
                allowed = torch.ones(n, n, dtype=torch.bool, device="cuda").tril()
                allowed = allowed if mask is None else allowed & mask
            return F.scaled_dot_product_attention(q, repeat_kv(k, 8), repeat_kv(v, 8), attn_mask=allowed)

        attends["sdpa"] = sdpa
        results = {name: forward_backward(attend, q, k, v, grad) for name, attend in attends.items()}
        out_diff = (results["flex"][0].float() - results["torch"][0].float()).abs().max().item()
        grad_diff = max(
            (a.float() - b.float()).abs().max().item()
            for a, b in zip(results["flex"][1], results["torch"][1])
        )
        fwd, both, mem = [], [], []
        for name, attend in attends.items():
            with torch.no_grad():
                fwd.append(median_ms(lambda: attend(q, k, v), args.repeats))
            both.append(median_ms(lambda: forward_backward(attend, q, k, v, grad), args.repeats))
            mem.append(peak_mib(lambda: forward_backward(attend, q, k, v, grad)))
        print(
            f"{n:>6} {kv_heads:>3} {str(causal):>6} {str(padded):>4} | {out_diff:9.2e} {grad_diff:9.2e} | "
            f"{'/'.join(f'{t:.1f}' for t in fwd):>24} | {'/'.join(f'{t:.1f}' for t in both):>24} | "
            f"{'/'.join(f'{m:.0f}' for m in mem):>21}",
            flush=True,
        )


if __name__ == "__main__":
    main()
