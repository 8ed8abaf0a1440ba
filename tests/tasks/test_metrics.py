"""plugformer/tasks/metrics.py: batch sums against a hand count and F.cross_entropy."""

from __future__ import annotations

import math

import pytest
import torch

from plugformer.tasks.base import IGNORE_INDEX
from plugformer.tasks.metrics import METRIC_KEYS, EvalResult, batch_metrics, eval_line, eval_result


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


def test_bytes_are_counted_at_scored_targets_only_and_give_bits_per_byte():
    targets = torch.tensor([[1, 2, IGNORE_INDEX], [3, 0, 1]])
    target_bytes = torch.tensor([[1, 3, 7], [2, 1, 4]])
    logits = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(1))
    metrics = batch_metrics(logits, targets, target_bytes)
    assert metrics["bytes"] == 1 + 3 + 2 + 1 + 4  # the 7 is under an ignored target
    result = eval_result(3, {key: metrics[key] for key in METRIC_KEYS})
    summed = torch.nn.functional.cross_entropy(logits.view(-1, 4), targets.view(-1), reduction="sum")
    assert result.bits_per_byte == pytest.approx(float(summed) / 11 / math.log(2))
    assert result.perplexity == pytest.approx(math.exp(float(summed) / 5))


def test_tasks_without_bytes_have_no_bits_per_byte():
    targets = torch.tensor([[1, 2]])
    metrics = batch_metrics(torch.zeros(1, 2, 4), targets)
    assert metrics["bytes"] == 0
    result = eval_result(2, metrics)
    assert result.bits_per_byte is None
    assert result.perplexity == pytest.approx(4.0)  # uniform over 4 ids
    assert "bits per byte" not in eval_line(result)


def test_an_eval_result_saved_before_perplexity_still_loads():
    old = {"length": 8, "loss": 0.5, "accuracy": 0.9, "exact_match": 0.5}
    result = EvalResult(**old)
    assert result.perplexity == pytest.approx(math.exp(0.5)) and result.bits_per_byte is None
    assert EvalResult(length=1, loss=1e4, accuracy=0.0, exact_match=0.0).perplexity == math.inf
