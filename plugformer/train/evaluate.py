"""Held-out scores of a model that may be sharded across ranks; what `compare` and `train`
both evaluate with."""

from __future__ import annotations

import torch
from torch import nn

from plugformer.tasks.base import Task
from plugformer.tasks.metrics import METRIC_KEYS, EvalResult, batch_metrics, eval_result
from plugformer.train.data import slice_rows
from plugformer.train.distributed import Dist, all_reduce_sum, autocast, unwrap

__all__ = ["evaluate"]


def evaluate(model: nn.Module, task: Task, where: Dist = Dist(), *,
             precision: str = "fp32") -> list[EvalResult]:
    """Held-out scores of ``model`` at every task length (collective when ``where`` has ranks).

    Each rank scores an even share of the rows of every eval batch and the sums are added up,
    so every rank runs the same number of forwards (FSDP needs that) and gets the same result,
    which equals what one process computes on the whole model. Alone (the default ``where``)
    it scores a plain model on the CPU, e.g. one opened with ``plugformer.load``.
    """
    kind = unwrap(model).kind
    was_training = model.training
    model.eval()
    results = []
    with torch.no_grad():
        for length in task.lengths:
            totals = torch.zeros(len(METRIC_KEYS), dtype=torch.float64, device=where.device)
            for batch in task.eval_batches(length, kind):
                rows = batch.targets.shape[0]
                shared = rows >= where.world
                part = slice_rows(batch, slice(rows * where.rank // where.world,
                                               rows * (where.rank + 1) // where.world)) if shared else batch
                part = part.to(where.device)
                with autocast(where.device, precision):
                    logits = part.logits(model)
                if shared or where.is_main:
                    scores = batch_metrics(logits, part.targets, getattr(part, "target_bytes", None))
                    totals += torch.tensor([scores[key] for key in METRIC_KEYS],
                                           dtype=torch.float64, device=where.device)
            summed = all_reduce_sum(totals, where).tolist()
            results.append(eval_result(length, dict(zip(METRIC_KEYS, summed))))
    model.train(was_training)
    return results
