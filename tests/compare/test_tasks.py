"""The built-in tasks (plugformer/plugins/tasks.py) and the task machinery (compare/task.py).

Targets are checked against an independent route (Python's own sorted / reversed / dict look-up),
train/eval disjointness in a space small enough that a naive split would collide.
"""

from __future__ import annotations

import pytest
import torch

from plugformer.compare.task import IGNORE_INDEX, SPLIT_BUCKETS, LMBatch, Seq2SeqBatch, batch_metrics, split_of
from plugformer.plugins.tasks import CopyTask, MQARTask, ReverseTask, SortTask, copy, mqar, reverse, sort


def _rows(tensor: torch.Tensor) -> set[tuple[int, ...]]:
    return {tuple(row) for row in tensor.tolist()}


@pytest.mark.parametrize("factory, answer", [
    (copy, lambda row: list(row)),
    (reverse, lambda row: list(reversed(row))),
    (sort, lambda row: sorted(row)),
])
def test_seq2seq_targets_are_right(factory, answer):
    task = factory(length=7, vocab=5)
    batch = task.batch(3, 32, kind="encdec", seed=1)
    assert isinstance(batch, Seq2SeqBatch)
    assert batch.src.shape == (32, 7) and batch.tgt_in.shape == batch.tgt_out.shape == (32, 8)
    for src, tgt_in, tgt_out in zip(batch.src.tolist(), batch.tgt_in.tolist(), batch.tgt_out.tolist()):
        expected = answer(src)
        assert tgt_out == expected + [task.eos_id]
        assert tgt_in == [task.bos_id] + expected
        assert all(task.first_token <= t < task.vocab_size for t in src)


def test_sort_is_really_sorted_and_a_permutation():
    batch = sort(length=12, vocab=6).batch(0, 64, kind="encdec")
    answers = batch.tgt_out[:, :-1]
    assert bool((answers[:, 1:] >= answers[:, :-1]).all())
    assert torch.equal(answers.sort(-1).values, batch.src.sort(-1).values)


def test_batches_depend_on_seed_and_step_only():
    task = copy(length=8)
    a = task.batch(5, 16, kind="encdec", seed=3)
    b = copy(length=8).batch(5, 16, kind="encdec", seed=3)
    assert torch.equal(a.src, b.src)
    assert not torch.equal(a.src, task.batch(6, 16, kind="encdec", seed=3).src)
    assert not torch.equal(a.src, task.batch(5, 16, kind="encdec", seed=4).src)


@pytest.mark.parametrize("task", [copy(length=3, vocab=4), mqar(pairs=2, keys=3, values=2)])
def test_train_and_eval_never_overlap(task):
    # 64 (copy) or 48 (mqar) distinct sources: every one is drawn many times over.
    kind = task.kinds[0]
    held_out = set()
    for batch in task.eval_batches(task.length, kind, batch_size=64):
        source = batch.src if kind == "encdec" else batch.ids
        held_out |= _rows(source)
    trained = set()
    for step in range(50):
        batch = task.batch(step, 64, kind=kind)
        trained |= _rows(batch.src if kind == "encdec" else batch.ids)
    assert held_out and trained
    assert not held_out & trained
    # the split is a function of the tokens: sources hash to the buckets their split says
    assert all(int(split_of(torch.tensor([row]))) == 0 for row in held_out)


def test_split_spreads_over_buckets():
    sources = copy(length=16).sample(16, 4000, torch.Generator().manual_seed(0)).source
    counts = torch.bincount(split_of(sources), minlength=SPLIT_BUCKETS).float()
    assert counts.min() > 0.6 * counts.mean()


def test_eval_set_is_fixed_and_covers_each_length():
    task = reverse(length=5, eval_lengths=[9], eval_size=40)
    first = task.eval_batches(9, "encdec", batch_size=16)
    again = reverse(length=5, eval_lengths=[9], eval_size=40).eval_batches(9, "encdec", batch_size=16)
    assert [b.src.shape for b in first] == [(16, 9), (16, 9), (8, 9)]
    assert all(torch.equal(x.src, y.src) for x, y in zip(first, again))
    assert task.lengths == (5, 9) and task.max_len == 10


def test_mqar_answers_are_the_values_of_the_queried_keys():
    task = mqar(pairs=6, keys=10, values=7)
    batch = task.batch(0, 32, kind="lm")
    assert isinstance(batch, LMBatch) and batch.ids.shape == (32, 18)
    for ids, targets in zip(batch.ids.tolist(), batch.targets.tolist()):
        keys, values, queries = ids[0:12:2], ids[1:12:2], ids[12:]
        assert len(set(keys)) == 6
        assert all(task.first_token <= k < task.first_token + 10 for k in keys)
        assert all(task.first_token + 10 <= v < task.vocab_size for v in values)
        assert sorted(queries) == sorted(keys)
        memory = dict(zip(keys, values))
        assert targets[12:] == [memory[q] for q in queries]


def test_mqar_loss_mask_is_on_the_answers_only():
    batch = mqar(pairs=4, keys=8, values=8, queries=3).batch(0, 8, kind="lm")
    scored = batch.targets != IGNORE_INDEX
    assert scored[:, -3:].all() and not scored[:, :-3].any()


def test_mqar_seq2seq_form():
    task = mqar(pairs=4, keys=8, values=8)
    lm, s2s = task.batch(2, 8, kind="lm"), task.batch(2, 8, kind="encdec")
    assert torch.equal(s2s.src, lm.ids)
    assert torch.equal(s2s.tgt_out, lm.targets[:, -4:])
    assert torch.equal(s2s.tgt_in[:, 1:], s2s.tgt_out[:, :-1])
    assert (s2s.tgt_in[:, 0] == task.bos_id).all()


def test_kinds_and_sizes():
    assert CopyTask.kinds == ReverseTask.kinds == SortTask.kinds == ("encdec",)
    assert MQARTask.kinds == ("lm", "encdec")
    assert copy(vocab=64).vocab_size == 67
    assert mqar(pairs=8, keys=64, values=64, eval_lengths=[16]).max_len == 48
    with pytest.raises(ValueError, match="serves encdec models, not 'lm'"):
        copy().batch(0, 2, kind="lm")


@pytest.mark.parametrize("make, message", [
    (lambda: mqar(pairs=8, keys=4), "keys=4 cannot make 8 distinct keys"),
    (lambda: mqar(pairs=4, queries=5), "queries must be between 1 and"),
    (lambda: copy(length=0), "lengths must be >= 1, got 0"),
    (lambda: copy(vocab=0), "vocab must be >= 1, got 0"),
])
def test_bad_arguments(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_a_space_with_one_example_says_which_split_is_empty():
    task = copy(length=1, vocab=1)  # the only source is [3]
    held_out = int(split_of(torch.tensor([[task.first_token]]))) == 0
    with pytest.raises(ValueError, match="too few training examples" if held_out else "too few held-out examples"):
        task.eval_batches(1, "encdec") if not held_out else task.batch(0, 4, kind="encdec")


def test_batch_metrics_against_a_hand_count():
    targets = torch.tensor([[1, 2, IGNORE_INDEX], [3, 0, 1]])
    predicted = torch.tensor([[1, 2, 0], [3, 1, 1]])
    logits = torch.nn.functional.one_hot(predicted, 4).float() * 10
    metrics = batch_metrics(logits, targets)
    assert metrics["tokens"] == 5 and metrics["correct"] == 4
    assert metrics["rows"] == 2 and metrics["exact"] == 1
    expected = torch.nn.functional.cross_entropy(logits.view(-1, 4), targets.view(-1), reduction="sum")
    assert metrics["loss_sum"] == pytest.approx(float(expected))
