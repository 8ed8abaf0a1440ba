"""Scores of next-token predictions: per-batch sums that add up, and the held-out result.

`batch_metrics` scores one batch as sums; `eval_result` turns the sums over a length's batches
into an `EvalResult` (means). `compare` and `train` both evaluate through these two.
"""

from __future__ import annotations

from typing import Mapping

import attrs
from torch import Tensor, nn

from plugformer.tasks.base import IGNORE_INDEX

__all__ = ["EvalResult", "METRIC_KEYS", "batch_metrics", "eval_result"]

#: The keys of `batch_metrics`, in a fixed order (for summing them as one tensor across ranks).
METRIC_KEYS = ("loss_sum", "tokens", "correct", "rows", "exact")


@attrs.define
class EvalResult:
    """Held-out scores at one length.

    Attributes:
        length: the task length evaluated (tokens, or key-value pairs for ``mqar``).
        loss: mean cross-entropy per scored token.
        accuracy: fraction of scored tokens predicted right (answer accuracy for ``mqar``).
        exact_match: fraction of examples whose scored tokens are all right.
    """

    length: int
    loss: float
    accuracy: float
    exact_match: float


def batch_metrics(logits: Tensor, targets: Tensor) -> dict[str, float]:
    """Loss and accuracies of next-token ``logits`` (B, T, V) against ``targets`` (B, T).

    Returns sums, so that batches add up: ``loss_sum`` (cross-entropy summed over scored
    tokens), ``tokens`` (scored tokens), ``correct`` (scored tokens whose argmax is right),
    ``rows`` and ``exact`` (rows whose scored tokens are all right). Teacher-forced exact match
    equals greedy-decoding exact match: a row is all right under teacher forcing exactly when
    greedy decoding reproduces it.
    """
    scored = targets != IGNORE_INDEX
    loss_sum = nn.functional.cross_entropy(
        logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")
    hits = (logits.argmax(-1) == targets) & scored
    return {
        "loss_sum": float(loss_sum),
        "tokens": int(scored.sum()),
        "correct": int(hits.sum()),
        "rows": int(targets.shape[0]),
        "exact": int((hits | ~scored).all(-1).sum()),
    }


def eval_result(length: int, totals: Mapping[str, float]) -> EvalResult:
    """The `EvalResult` at ``length`` of `batch_metrics` sums added over its batches.

    An empty total (no scored token, no row) scores 0 rather than dividing by zero.
    """
    tokens = max(totals["tokens"], 1)
    return EvalResult(length=length, loss=totals["loss_sum"] / tokens,
                      accuracy=totals["correct"] / tokens,
                      exact_match=totals["exact"] / max(totals["rows"], 1))
