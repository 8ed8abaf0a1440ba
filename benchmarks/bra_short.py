"""Where bra's two CPU paths cross: gathered tiles against every score under the routed mask.

Both compute the same attention (tests/plugins/bra/ runs every test on both). The tiles
touch only the chosen regions but pay for routing into tiles, gathers and a custom backward;
the masked path computes all Lq x Lk scores in a few large matmuls. Short sequences favour the
second, long ones the first; the kernel's ``dense_up_to`` is where it switches.

Forward+backward of one kernel call, 4 heads of 16 (transformer_tiny's), 4,096 tokens per batch
(batch = 4096 / N), float32, region N/8 and topk 4 (half of the keys, as the demo's
region=4, topk=2 at N=16), and region 64 / topk 4 beside it above N = 512. Median of interleaved
repeats; the ratio is tiles time / masked time, so > 1 means the masked path is faster.

    python benchmarks/bra_short.py            # about a minute on 2 cores
    python benchmarks/bra_short.py --causal

Measured on 2 CPU cores (tiles/masked): bidirectional 5.2 at N=16, 2.5 at 32, 1.16 at 64,
0.76 at 128, 0.37 at 256; causal 7.6 at 16, 3.3 at 64, 1.2 at 128, 0.75 at 256. Hence
the default ``dense_up_to=64``.
"""

from __future__ import annotations

import argparse

import torch

from plugformer.compare.timing import time_interleaved
from plugformer.plugins.bra import BiLevelRoutingAttention

HEADS, HEAD_DIM, TOKENS = 4, 16, 4096
LENGTHS = (16, 32, 64, 128, 256, 512, 1024, 2048)


def fwd_bwd(kernel: BiLevelRoutingAttention, q, k, v, grad, *, causal: bool):
    def call() -> None:
        out = kernel(q, k, v, causal=causal)
        out.backward(grad)
        q.grad = k.grad = v.grad = None

    return call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--causal", action="store_true")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    default = BiLevelRoutingAttention(heads=HEADS, head_dim=HEAD_DIM).dense_up_to
    print(f"bra fwd+bwd, {HEADS} heads x {HEAD_DIM}, {TOKENS} tokens per batch, "
          f"{'causal' if args.causal else 'bidirectional'}; dense_up_to = {default} by default")
    print(f"{'N':>6} {'region/topk':>12} {'tiles ms':>9} {'masked ms':>10} {'tiles/masked':>13}")
    for n in LENGTHS:
        shapes = [(max(1, n // 8), 4)] + ([(64, 4)] if n > 512 else [])
        for region, topk in shapes:
            torch.manual_seed(0)
            b = max(1, TOKENS // n)
            q, k, v = (torch.randn(b, HEADS, n, HEAD_DIM, requires_grad=True) for _ in range(3))
            grad = torch.randn(b, HEADS, n, HEAD_DIM)
            kernels = [  # tiles, then every score under the routed mask
                BiLevelRoutingAttention(heads=HEADS, head_dim=HEAD_DIM, region=region, topk=topk,
                                        backend="torch", dense_up_to=threshold)
                for threshold in (0, 1 << 30)
            ]
            calls = [fwd_bwd(kernel, q, k, v, grad, causal=args.causal) for kernel in kernels]
            tiles, masked = time_interleaved(calls, repeats=args.repeats)
            print(f"{n:>6} {f'{region}/{topk}':>12} {tiles * 1e3:>9.2f} {masked * 1e3:>10.2f} "
                  f"{tiles / masked:>13.2f}", flush=True)

if __name__ == "__main__":
    main()
