"""plugformer/tasks/metrics.py: batch sums against a hand count and F.cross_entropy."""

from __future__ import annotations

import pytest
import torch

from plugformer.tasks.base import IGNORE_INDEX
from plugformer.tasks.metrics import METRIC_KEYS, batch_metrics, eval_result

def test_batch_metrics_against_a_hand_count():
    targets = torch.tensor([[1, 2, IGNORE_INDEX], [3, 0, 1]])
    predicted = torch.tensor([[1, 2, 0], [3, 1, 1]])
    logits = torch.nn.functional.one_hot(predicted, 4).float() * 10
    metrics = batch_metrics(logits, targets)
    assert metrics["tokens"] == 5 and metrics["correct"] == 4
    assert metrics["rows"] == 2 and metrics["exact"] == 1
    expected = torch.nn.functional.cross_entropy(logits.view(-1, 4), targets.view(-1), reduction="sum")
    assert metrics["loss_sum"] == pytest.approx(float(expected))


def test_eval_result_is_the_means_of_the_summed_batches():
    targets = torch.tensor([[1, 2, IGNORE_INDEX], [3, 0, 1], [2, 2, 2]])
    logits = torch.randn(3, 3, 4, generator=torch.Generator().manual_seed(0))
    halves = [batch_metrics(logits[:2], targets[:2]), batch_metrics(logits[2:], targets[2:])]
    totals = {key: sum(half[key] for half in halves) for key in METRIC_KEYS}
    result = eval_result(7, totals)
    scored = targets != IGNORE_INDEX
    hits = (logits.argmax(-1) == targets) & scored
    expected_loss = torch.nn.functional.cross_entropy(logits.view(-1, 4), targets.view(-1))
    assert result.length == 7
    assert result.loss == pytest.approx(float(expected_loss))
    assert result.accuracy == pytest.approx(float(hits.sum() / scored.sum()))
    assert result.exact_match == pytest.approx(float((hits | ~scored).all(-1).float().mean()))
