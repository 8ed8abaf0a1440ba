"""The data of a training step, split across ranks and micro-batches.

``--batch`` is the *global* batch: the examples behind one optimiser step, whatever the number
of ranks. At step ``s`` the global batch is ``task.batch(s, batch, kind=..., seed=seed)``, a
function of the seed and the step alone. Every rank draws it (a synthetic task draws a batch in
microseconds) and keeps its own rows: micro-batch ``j`` of rank ``r`` is the contiguous slice
number ``j * world + r`` of ``batch / (world * grad_accum)`` rows. Any world size and any
accumulation therefore cover the same examples in the same steps, and with the loss normalised
by the scored tokens of the global batch (`scored_tokens`), a run on N ranks follows the same
curve as one process.
"""

from __future__ import annotations

import attrs
import torch
from torch import Tensor

from plugformer.tasks.base import IGNORE_INDEX, Batch, LMBatch, Seq2SeqBatch

__all__ = ["BatchPlan", "slice_rows", "scored_tokens", "input_tokens"]


@attrs.frozen
class BatchPlan:
    """How the global batch of one step splits into per-rank micro-batches.

    Args:
        global_batch: examples per optimiser step, over all ranks and micro-batches.
        world: number of ranks.
        accum: micro-batches per rank per step (gradient accumulation).

    Raises:
        ValueError: ``global_batch`` is not a multiple of ``world * accum``.
    """

    global_batch: int
    world: int = 1
    accum: int = 1

    def __attrs_post_init__(self) -> None:
        if self.global_batch < 1 or self.world < 1 or self.accum < 1:
            raise ValueError(f"batch, world size and grad-accum must be >= 1, got batch="
                             f"{self.global_batch}, world size {self.world}, grad-accum {self.accum}")
        parts = self.world * self.accum
        if self.global_batch % parts:
            fits = max(parts, self.global_batch // parts * parts)
            raise ValueError(
                f"--batch {self.global_batch} (the global batch: examples per optimiser step) does "
                f"not split evenly into {self.world} rank(s) x {self.accum} micro-batch(es) "
                f"(--grad-accum); use a multiple of {parts}, e.g. {fits}")

    @property
    def micro_rows(self) -> int:
        """Examples in one micro-batch of one rank."""
        return self.global_batch // (self.world * self.accum)

    def rows(self, rank: int, micro: int) -> slice:
        """The rows of the global batch that rank ``rank`` runs as micro-batch ``micro``."""
        if not (0 <= rank < self.world and 0 <= micro < self.accum):
            raise ValueError(f"rank {rank} / micro-batch {micro} outside a plan of {self.world} "
                             f"rank(s) x {self.accum} micro-batch(es)")
        start = (micro * self.world + rank) * self.micro_rows
        return slice(start, start + self.micro_rows)


def slice_rows(batch: Batch, rows: slice) -> Batch:
    """The examples ``rows`` of ``batch``: every tensor field sliced along its first dimension."""
    fields = attrs.asdict(batch, recurse=False)
    return attrs.evolve(batch, **{name: value[rows] for name, value in fields.items()
                                  if isinstance(value, Tensor)})


def scored_tokens(batch: Batch) -> int:
    """Target positions that carry a loss (not ``IGNORE_INDEX``)."""
    return int((batch.targets != IGNORE_INDEX).sum())


def input_tokens(batch: Batch) -> int:
    """Tokens the model reads: source plus decoder input for ``encdec``, the ids for ``lm``."""
    if isinstance(batch, Seq2SeqBatch):
        return batch.src.numel() + batch.tgt_in.numel()
    if isinstance(batch, LMBatch):
        return batch.ids.numel()
    return int(torch.as_tensor(batch.targets).numel())
