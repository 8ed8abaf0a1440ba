"""The built-in tasks (plugformer/tasks/synthetic.py).

Targets are checked against an independent route (Python's own sorted / reversed / dict look-up).
"""

from __future__ import annotations

import pytest
import torch

from plugformer.tasks.base import IGNORE_INDEX, LMBatch, Seq2SeqBatch
from plugformer.tasks.synthetic import CopyTask, MQARTask, ReverseTask, SortTask, copy, mqar, reverse, sort

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
