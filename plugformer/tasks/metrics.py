"""Scores of next-token predictions: per-batch sums that add up, and the held-out result.

`batch_metrics` scores one batch as sums; `eval_result` turns the sums over a length's batches
into an `EvalResult` (means). `compare` and `train` both evaluate through these two.

Bits per byte: the loss summed over the predicted tokens, in bits, divided by the bytes those
tokens stand for (``loss_sum / bytes / ln 2``). Unlike loss per token it compares models with
different tokenizers; it exists for tasks whose batches say how many bytes each target token
stands for (a ``target_bytes`` tensor, as the ``text`` task's batches carry).
"""

from __future__ import annotations

import math
from typing import Mapping, Optional

import attrs
from torch import Tensor, nn

from plugformer.tasks.base import IGNORE_INDEX

__all__ = ["EvalResult", "METRIC_KEYS", "SCORES", "batch_metrics", "eval_result", "eval_line",
           "bits_per_byte", "perplexity", "scores_of", "result_from_scores", "is_fraction", "short_name"]

#: The keys of `batch_metrics`, in a fixed order (for summing them as one tensor across ranks).
METRIC_KEYS = ("loss_sum", "tokens", "correct", "rows", "exact", "bytes")


def perplexity(loss: float) -> float:
    """``exp(loss)`` of a mean loss per token in nats; ``inf`` where that overflows."""
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf


def bits_per_byte(loss_sum: float, num_bytes: int) -> float:
    """Bits per byte from a loss summed over tokens (nats) and the bytes of those tokens."""
    return loss_sum / max(num_bytes, 1) / math.log(2)


@attrs.define
class EvalResult:
    """Held-out scores at one length.

    Attributes:
        length: the task length evaluated (tokens, or key-value pairs for ``mqar``).
        loss: mean cross-entropy per scored token, in nats (the loss per token).
        accuracy: fraction of scored tokens predicted right (answer accuracy for ``mqar``).
        exact_match: fraction of examples whose scored tokens are all right.
        perplexity: ``exp(loss)``. Default: computed from ``loss`` (results saved before it).
        bits_per_byte: the summed loss in bits over the bytes of the scored tokens; None for
            tasks whose tokens stand for no bytes (the synthetic ones).
    """

    length: int
    loss: float
    accuracy: float
    exact_match: float
    perplexity: float = attrs.field(default=attrs.Factory(lambda self: perplexity(self.loss),
                                                          takes_self=True))
    bits_per_byte: Optional[float] = None


def batch_metrics(logits: Tensor, targets: Tensor,
                  target_bytes: Optional[Tensor] = None) -> dict[str, float]:
    """Loss and accuracies of next-token ``logits`` (B, T, V) against ``targets`` (B, T).

    Returns sums, so that batches add up: ``loss_sum`` (cross-entropy summed over scored
    tokens), ``tokens`` (scored tokens), ``correct`` (scored tokens whose argmax is right),
    ``rows`` and ``exact`` (rows whose scored tokens are all right), ``bytes`` (the bytes of the
    scored tokens, from ``target_bytes`` (B, T); 0 without it). Teacher-forced exact match
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
        "bytes": int(target_bytes[scored].sum()) if target_bytes is not None else 0,
    }


def eval_result(length: int, totals: Mapping[str, float]) -> EvalResult:
    """The `EvalResult` at ``length`` of `batch_metrics` sums added over its batches.

    ``bits_per_byte`` is None when the sums count no bytes (``totals`` without ``bytes``, or
    0). An empty total (no scored token, no row) scores 0 rather than dividing by zero.
    """
    tokens = max(totals["tokens"], 1)
    loss = totals["loss_sum"] / tokens
    num_bytes = totals.get("bytes", 0)
    return EvalResult(length=length, loss=loss, accuracy=totals["correct"] / tokens,
                      exact_match=totals["exact"] / max(totals["rows"], 1),
                      perplexity=perplexity(loss),
                      bits_per_byte=bits_per_byte(totals["loss_sum"], int(num_bytes)) if num_bytes else None)


#: The scores an `EvalResult` holds, by name: a run's record stores each as ``name@length``.
SCORES = ("loss", "accuracy", "exact_match", "perplexity", "bits_per_byte")

_SHORT = {"exact_match": "EM", "accuracy": "acc", "bits_per_byte": "bpb", "perplexity": "ppl",
          "loss": "loss"}


def scores_of(result: EvalResult) -> dict[str, float]:
    """``result``'s scores by name (`SCORES`), leaving out those the task does not have."""
    return {name: getattr(result, name) for name in SCORES if getattr(result, name) is not None}


def result_from_scores(length: int, scores: Mapping[str, float]) -> EvalResult:
    """The `EvalResult` at ``length`` back from `scores_of`'s dict (perplexity recomputed
    from the loss when absent, as in records written before it existed)."""
    known = {name: scores[name] for name in SCORES if scores.get(name) is not None}
    return EvalResult(length=length, **known)


def is_fraction(metric: str) -> bool:
    """Whether ``metric`` (a name of `SCORES`) is a share, shown as a percentage."""
    return metric in ("accuracy", "exact_match")


def short_name(metric: str) -> str:
    """The column name of ``metric`` in tables: ``EM``, ``acc``, ``bpb``, ``ppl``, ``loss``."""
    return _SHORT.get(metric, metric)


def eval_line(result: EvalResult, sep: str = ", ") -> str:
    """``result`` as one line for a report: accuracy, exact match, loss, and for tasks with
    bytes (text) perplexity and bits per byte."""
    parts = [f"accuracy {result.accuracy:.4f}", f"exact match {result.exact_match:.4f}",
             f"loss {result.loss:.4f}"]
    if result.bits_per_byte is not None:
        parts += [f"perplexity {result.perplexity:.3f}", f"bits per byte {result.bits_per_byte:.4f}"]
    return sep.join(parts)
