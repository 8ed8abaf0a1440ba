"""Parts the training tests need, and a launcher script that registers them first.

Run as a script (``torchrun ... tests/train/launch_helpers.py SPEC ...``) it registers the
``ragged`` task and the ``failing`` feed-forward in the default registry, then runs
``python -m plugformer.train`` with the remaining arguments. Imported (by the tests) it
registers nothing, so the registry that other tests see stays clean.
"""

from __future__ import annotations

import os
import sys
from typing import ClassVar

import torch
from torch import Tensor, nn

from plugformer.tasks.base import IGNORE_INDEX, Example, LMBatch, Task
from plugformer.core.interfaces import FeedForward

FAILURE_MESSAGE = "injected failure on this rank only"


class RaggedTask(Task):
    """Next-token prediction where each row scores a different number of tokens.

    Row ``i`` leaves its first ``ids[i, 0] % length`` targets unscored, so micro-batches hold
    unequal token counts: averaging per micro-batch would weight tokens unequally, and only a
    loss normalised by the global token count matches one big batch.
    """

    name = "ragged"
    kinds: ClassVar[tuple[str, ...]] = ("lm",)
    primary_metric: ClassVar[str] = "accuracy"
    symbols = 16

    @property
    def vocab_size(self) -> int:
        return self.first_token + self.symbols

    def max_len_at(self, length: int) -> int:
        return length

    def sample(self, length: int, count: int, generator: torch.Generator) -> Example:
        source = self.first_token + torch.randint(self.symbols, (count, length), generator=generator)
        return Example(source, source)

    def lm_batch(self, example: Example) -> LMBatch:
        ids = example.source
        length = ids.shape[1]
        targets = torch.roll(ids, -1, dims=1)
        skip = ids[:, :1] % length  # (B, 1)
        targets = torch.where(torch.arange(length) < skip, IGNORE_INDEX, targets)
        targets[:, -1] = IGNORE_INDEX
        return LMBatch(ids=ids, targets=targets)


def ragged(*, length: int = 8, eval_size: int = 64) -> RaggedTask:
    """Next-token prediction with a different number of scored tokens per row (tests only)."""
    return RaggedTask(length=length, eval_size=eval_size)


class FailingFeedForward(FeedForward):
    """A linear map that raises, on the rank named by ``FAIL_RANK`` only, from its
    ``fail_at``-th training forward on."""

    def __init__(self, *, d_model: int, fail_at: int, device=None, dtype=None) -> None:
        super().__init__()
        self.proj = nn.Linear(d_model, d_model, device=device, dtype=dtype)
        self.fail_at = fail_at
        self.calls = 0

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, L, D) -> (B, L, D)."""
        if self.training and os.environ.get("RANK") == os.environ.get("FAIL_RANK", "none"):
            self.calls += 1
            if self.calls >= self.fail_at:
                raise RuntimeError(FAILURE_MESSAGE)
        return self.proj(x)


def failing(ctx, *, fail_at: int = 2) -> FailingFeedForward:
    """A feed-forward that fails on the rank named by FAIL_RANK (tests only)."""
    return FailingFeedForward(d_model=ctx.d_model, fail_at=fail_at, **ctx.factory_kwargs)


def main() -> int:
    import plugformer
    from plugformer.train.__main__ import main as train_main

    plugformer.register("task", "ragged")(ragged)
    plugformer.register("feedforward", "failing")(failing)
    return train_main()


if __name__ == "__main__":
    sys.exit(main())
