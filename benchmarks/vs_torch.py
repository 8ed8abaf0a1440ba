"""plugformer's Seq2SeqStack against torch.nn.Transformer, same shape, same weights.

Both sides are the Vaswani base shape (d_model 512, 8 heads, 6+6 layers, d_ff 2048, post-LN,
ReLU); ours is built by ``interop.from_torch`` with ``fused`` attention, so the weights are
identical and the outputs agree to float tolerance (checked before timing). Both are called
batch-first with a causal target mask (``tgt_mask`` + ``tgt_is_causal=True``), as a training
step would.

* forward: eval mode, ``torch.no_grad()`` (nn.Transformer may take its encoder fast path).
* forward+backward: train mode with dropout 0, loss = mean of squared outputs, gradients of
  every parameter.

Repeats are interleaved (torch, ours, ours, torch, ...) so that drifts in machine load hit both
alike; the medians, their ratio ours / torch and the median of the per-repeat ratios (each pair
ran back to back, so it resists a machine whose load changes) are printed. Target: ratio <= 1.05
for both. On a busy machine prefer ``--threads 1``: two threads that must wait for each other
measure the neighbours more than the code.

    python benchmarks/vs_torch.py                      # CPU float32, batch 8, 128 + 128 tokens
    python benchmarks/vs_torch.py --device cuda --bf16 --batch 32 --src-len 512 --tgt-len 512
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch
from torch import nn

from plugformer.interop import from_torch


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--src-len", type=int, default=128)
    parser.add_argument("--tgt-len", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=7, help="timed runs of each side and mode")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 weights and inputs")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--layers", type=int, default=6, help="encoder and decoder layers each")
    parser.add_argument("--padding", action="store_true", help="25%% source padding (key padding masks)")
    return parser.parse_args()


def models(args: argparse.Namespace, dtype: torch.dtype) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    theirs = nn.Transformer(
        d_model=512, nhead=8, num_encoder_layers=args.layers, num_decoder_layers=args.layers,
        dim_feedforward=2048, dropout=0.0, batch_first=True, device=args.device, dtype=dtype,
    )
    return theirs, from_torch(theirs, attn="fused")


def call_kwargs(args: argparse.Namespace, dtype: torch.dtype) -> dict:
    kwargs = dict(
        tgt_mask=nn.Transformer.generate_square_subsequent_mask(args.tgt_len, device=args.device, dtype=dtype),
        tgt_is_causal=True,
    )
    if args.padding:
        lengths = torch.full((args.batch,), args.src_len, device=args.device)
        lengths[: args.batch // 2] = args.src_len // 2  # half the rows half padding: 25% overall
        pad = torch.arange(args.src_len, device=args.device)[None, :] >= lengths[:, None]
        kwargs.update(src_key_padding_mask=pad, memory_key_padding_mask=pad)
    return kwargs


def timer(device: str) -> Callable[[Callable[[], None]], float]:
    def run(fn: Callable[[], None]) -> float:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - start

    return run


def main() -> None:
    args = parse_args()
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    theirs, ours = models(args, dtype)
    g = torch.Generator(device=args.device).manual_seed(1)
    src = torch.randn(args.batch, args.src_len, 512, device=args.device, dtype=dtype, generator=g)
    tgt = torch.randn(args.batch, args.tgt_len, 512, device=args.device, dtype=dtype, generator=g)
    kwargs = call_kwargs(args, dtype)
    sides = {"torch": theirs, "ours": ours}

    def forward(model: nn.Module) -> Callable[[], None]:
        def fn() -> None:
            with torch.no_grad():
                model(src, tgt, **kwargs)
        return fn

    def forward_backward(model: nn.Module) -> Callable[[], None]:
        def fn() -> None:
            model.zero_grad(set_to_none=True)
            model(src, tgt, **kwargs).float().square().mean().backward()
        return fn

    for model in sides.values():
        model.eval()
    with torch.no_grad():
        diff = (ours(src, tgt, **kwargs) - theirs(src, tgt, **kwargs)).float()
    print(
        f"shape: d_model 512, 8 heads, {args.layers}+{args.layers} layers, d_ff 2048, batch "
        f"{args.batch}, src {args.src_len}, tgt {args.tgt_len} tokens; {args.device} "
        f"{str(dtype).removeprefix('torch.')}, {torch.get_num_threads()} threads, torch "
        f"{torch.__version__}{', 25% source padding' if args.padding else ''}"
    )
    print(f"outputs agree: max abs diff {diff.abs().max().item():.2e}")

    time_it = timer(args.device)
    for mode, make, train in (("forward", forward, False), ("forward+backward", forward_backward, True)):
        for model in sides.values():
            model.train(train)
        fns = {name: make(model) for name, model in sides.items()}
        for fn in fns.values():  # warm-up
            fn()
        times = {name: [] for name in fns}
        for r in range(args.repeats):
            order = list(fns) if r % 2 == 0 else list(reversed(fns))
            for name in order:
                times[name].append(time_it(fns[name]))
        median = {name: statistics.median(t) for name, t in times.items()}
        paired = statistics.median(o / t for o, t in zip(times["ours"], times["torch"]))
        print(
            f"{mode:>16}: torch {median['torch'] * 1e3:8.1f} ms (min {min(times['torch']) * 1e3:.1f})"
            f"   ours {median['ours'] * 1e3:8.1f} ms (min {min(times['ours']) * 1e3:.1f})"
            f"   ours/torch {median['ours'] / median['torch']:.3f} (median of paired runs {paired:.3f})"
        )


if __name__ == "__main__":
    main()
