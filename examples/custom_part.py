"""Register your own attention kernel and compare it with the built-in one.

The kernel here is sigmoid attention (Ramapuram et al., 2024, "Theory, Analysis, and Best
Practices for Sigmoid Self-Attention"): each key's weight is an independent
``sigmoid(q k^T / sqrt(d) + b)`` with ``b = -log(Lk)`` instead of a softmax over the keys.
One decorator makes it a part like any other: ``attn=sigmoid`` now works in every spec, in
``plugformer list`` and in ``compare``::

    python examples/custom_part.py          # one to two minutes on two CPU cores
    python examples/custom_part.py --fast   # a few seconds: a smoke test
"""

from __future__ import annotations

import argparse
import math
from typing import Optional

import torch
from torch import Tensor

import plugformer
from plugformer.compare import compare
from plugformer.core.attention import repeat_kv
from plugformer.core.interfaces import AttentionKernel, ScoreBias
from plugformer.core.masks import with_causal


class SigmoidAttention(AttentionKernel):
    """sigmoid(q k^T * scale - log(Lk)) v: weights that need not sum to one.

    Masked keys (and future keys when causal) get weight 0. q: (B, H, Lq, Dh), k/v: (B, Hkv, Lk, Dh).
    """

    supports_bias = False

    def forward(self, q: Tensor, k: Tensor, v: Tensor, *, mask: Optional[Tensor] = None,
                causal: bool = False, score_bias: Optional[ScoreBias] = None) -> Tensor:
        """q: (B, H, Lq, Dh), k/v: (B, Hkv, Lk, Dh) -> (B, H, Lq, Dh)."""
        lq, lk = q.shape[-2], k.shape[-2]
        k, v = repeat_kv(k, q.shape[1]), repeat_kv(v, q.shape[1])
        scores = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5 - math.log(lk)  # (B, H, Lq, Lk)
        weights = torch.sigmoid(scores)
        allowed = with_causal(mask, causal, lq, lk, q.device)
        if allowed is not None:
            weights = weights * allowed
        return weights @ v


@plugformer.register("attention", "sigmoid")
def sigmoid(ctx) -> SigmoidAttention:
    """Sigmoid attention (Ramapuram et al. 2024): sigmoid(QK^T / sqrt(d) - log n) V, no softmax."""
    return SigmoidAttention()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="a few steps only (a smoke test)")
    args = parser.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))

    print(plugformer.registry.describe("attention", "sigmoid"))
    result = compare(
        "transformer_tiny(attn={dense, sigmoid})",
        task="copy",
        task_args={"length": 12, "eval_size": 32 if args.fast else 512},
        steps=5 if args.fast else 400,
        batch=16 if args.fast else 64,
        timing_repeats=1 if args.fast else 5,
    )
    print(result.table())


if __name__ == "__main__":
    main()
