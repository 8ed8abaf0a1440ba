"""How fast could BRA be with PyTorch's own CPU kernels? The kernel-only ceiling of the speed-up.

BRA's attention is many small blocks: causal token routing attends, per (query, earlier chosen
region) pair, one 64-key region (MoBA's grouped layout: tiles of queries that chose one region),
plus each region's causal diagonal block; bidirectional region routing attends, per query region
of 64 queries, the 256 keys of its 4 regions. This script times only the attention arithmetic on
those shapes, with every input already gathered into place (no routing, no gathers, no merging
of partial results), forward and backward:

* causal: ``aten._scaled_dot_product_flash_attention_for_cpu`` (and its backward) on the diagonal
  blocks and on tiles of exactly the widths the grouped plan of a random routing gives;
* bidirectional: the same fused kernel on (query region, 256 gathered keys) tiles;
* both again as batched matmuls and a softmax (what :mod:`plugformer.plugins.bra.sparse_region`
  computes), the better of the two giving the ceiling;

next to fused causal / bidirectional attention over the whole sequence (the same kernel on one
big block) and the whole ``bra`` kernel (routing, gathers, merging: what it really costs), in one
run, interleaved. The ratio fused / ceiling bounds what any data layout built on
these kernels can reach: if it is below a target, only a better small-block kernel would reach it.

    python benchmarks/bra_ceiling.py                     # N = 8192, 2 threads
    python benchmarks/bra_ceiling.py --lengths 1024,8192 --threads 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from plugformer.plugins.bra import BiLevelRoutingAttention
from plugformer.plugins.bra.grouped import grouped_plan
from plugformer.plugins.bra.routing import route
from plugformer.plugins.bra.tile_ops import grad_scores, grad_values, scaled_bmm

FLASH = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
FLASH_BACKWARD = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward
HEADS, HEAD_DIM, REGION, TOPK = 8, 64, 64, 4


def flash_pass(q, k, v, causal: bool) -> None:
    """Forward and backward of the fused kernel on already laid-out blocks (w, H, C, D)."""
    out, lse = FLASH(q, k, v, 0.0, causal, scale=HEAD_DIM**-0.5)
    FLASH_BACKWARD(torch.ones_like(out), q, k, v, out, lse, 0.0, causal, scale=HEAD_DIM**-0.5)


def matmul_pass(q, k, v, causal: bool) -> None:
    """The same forward and backward as batched matmuls and a softmax, by the arithmetic
    :mod:`plugformer.plugins.bra.sparse_region` uses (``tile_ops``), on (w, H, C, D) blocks."""
    q, k, v = (x.flatten(0, 1) for x in (q, k, v))
    scores = scaled_bmm(q, k.transpose(1, 2), HEAD_DIM**-0.5)
    if causal:
        scores.masked_fill_(torch.ones(q.shape[1], k.shape[1], dtype=torch.bool).triu(1), -torch.inf)
    p = torch.softmax(scores, dim=-1)
    out = torch.bmm(p, v)
    grad = torch.ones_like(out)
    grad_values(p, grad, None, 0.0)  # dv
    ds = grad_scores(p, grad, v, (grad * out).sum(-1, keepdim=True), None, 0.0)
    scaled_bmm(ds, k, HEAD_DIM**-0.5)  # dq
    scaled_bmm(ds.transpose(1, 2), q, HEAD_DIM**-0.5)  # dk


def blocks(count: int, rows: int, keys: int, generator: torch.Generator):
    shape = (count, HEADS)
    return (torch.randn(*shape, rows, HEAD_DIM, generator=generator),
            torch.randn(*shape, keys, HEAD_DIM, generator=generator),
            torch.randn(*shape, keys, HEAD_DIM, generator=generator))


def cases(n: int, causal: bool):
    """{name: callable} of the full fused attention and BRA's blocks at length n."""
    generator = torch.Generator().manual_seed(0)
    full = blocks(1, n, n, generator)
    regions = n // REGION
    if causal:
        q, k = (torch.randn(1, HEADS, n, HEAD_DIM, generator=generator) for _ in range(2))
        plan = grouped_plan(route(q, k, region=REGION, topk=TOPK, causal=True, routing="token"),
                            length=n, region=REGION, rows=128)
        diagonal = blocks(regions, REGION, REGION, generator)
        tiles = [blocks(count, width, REGION, generator)
                 for count, width in zip(plan.widths[::2], plan.widths[1::2]) if count]

        def bra(attend=flash_pass) -> None:
            attend(*diagonal, True)
            for tile in tiles:
                attend(*tile, False)
    else:
        tiles = blocks(regions, REGION, TOPK * REGION, generator)

        def bra(attend=flash_pass) -> None:
            attend(*tiles, False)
    kernel = BiLevelRoutingAttention(heads=HEADS, head_dim=HEAD_DIM, region=REGION, topk=TOPK)
    q, k, v = (x.transpose(1, 2).contiguous().transpose(1, 2).requires_grad_() for x in full)

    def whole() -> None:
        kernel(q, k, v, causal=causal).backward(torch.ones_like(q))

    return {"fused": lambda: flash_pass(*full, causal), "bra blocks": bra,
            "bra matmuls": lambda: bra(matmul_pass), "bra": whole}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=lambda s: [int(x) for x in s.split(",")], default=[8192],
                        help="comma-separated sequence lengths (default: 8192)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: 2)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per case, median (default: 3)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"fwd+bwd ms, {HEADS} heads of {HEAD_DIM}, region {REGION}, topk {TOPK}, {args.threads} threads, "
          f"median of {args.repeats}; load average at start {os.getloadavg()[0]:.1f}")
    print(f"{'mode':>13} {'N':>6} {'fused':>8} {'bra flash':>10} {'bra matmuls':>12} {'ceiling':>8} "
          f"{'bra kernel':>11} {'speed-up':>9}")
    for causal in (True, False):
        for n in args.lengths:
            runs = cases(n, causal)
            times: dict[str, list[float]] = {name: [] for name in runs}
            for name, run in runs.items():
                run()  # warm-up
            for _ in range(args.repeats):
                for name, run in runs.items():
                    start = time.perf_counter()
                    run()
                    times[name].append(time.perf_counter() - start)
            fused, flash, matmuls, whole = (statistics.median(times[name]) * 1e3 for name in runs)
            mode = "causal" if causal else "bidirectional"
            ceiling = fused / min(flash, matmuls)
            print(f"{mode:>13} {n:>6} {fused:>8.1f} {flash:>10.1f} {matmuls:>12.1f} {ceiling:>7.1f}x "
                  f"{whole:>11.1f} {fused / whole:>8.1f}x")
    print(f"load average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
