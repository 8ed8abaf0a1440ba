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


# ---------------------------------------------------------------- mqar, Zoology's long layout

def _read_long_mqar(task: MQARTask, source: list[int]) -> tuple[list[int], list[int]]:
    """Brute-force reader: checks the layout token by token, returns (query positions, answers)."""
    pairs = task.pairs
    key_ids = range(task.first_token, task.first_token + task.keys)
    value_ids = range(task.first_token + task.keys, task.first_token + task.keys + task.values)
    memory = {}
    for i in range(pairs):
        key, value = source[2 * i], source[2 * i + 1]
        assert key in key_ids and value in value_ids and key not in memory
        memory[key] = value
    positions, answers = [], []
    for position in range(2 * pairs, len(source)):
        token = source[position]
        if token == task.filler_id:
            continue
        assert token in memory, f"token {token} at {position} is neither filler nor a stored key"
        assert (position - 2 * pairs) % 2 == 0
        positions.append(position)
        answers.append(memory[token])
    return positions, answers


@pytest.mark.parametrize("queries", [None, 3])
def test_long_mqar_layout_read_by_brute_force(queries):
    task = mqar(pairs=5, keys=9, values=7, queries=queries, length=40, power=1.0)
    lm, s2s = task.batch(4, 32, kind="lm", seed=2), task.batch(4, 32, kind="encdec", seed=2)
    assert lm.ids.shape == (32, 40) and torch.equal(s2s.src, lm.ids)
    asked = 5 if queries is None else 3
    for ids, targets, answer in zip(lm.ids.tolist(), lm.targets.tolist(), s2s.tgt_out.tolist()):
        positions, answers = _read_long_mqar(task, ids)
        assert len(positions) == asked and len(set(ids[p] for p in positions)) == asked
        assert [t for t in targets if t != IGNORE_INDEX] == answers
        assert [p for p, t in enumerate(targets) if t != IGNORE_INDEX] == positions
        assert answer == answers
    assert (s2s.tgt_in[:, 0] == task.bos_id).all()
    assert torch.equal(s2s.tgt_in[:, 1:], s2s.tgt_out[:, :-1])


def test_long_mqar_lengths_count_tokens():
    task = mqar(pairs=4, keys=8, values=8, length=24, eval_lengths=[64])
    assert task.lengths == (24, 64) and task.max_len == 64
    assert task.vocab_size == task.first_token + 8 + 8 + 1 == task.filler_id + 1
    (batch,) = task.eval_batches(64, "lm", batch_size=512)
    assert batch.ids.shape == (512, 64)
    for ids in batch.ids[:16].tolist():
        positions, _ = _read_long_mqar(task, ids)
        assert len(positions) == 4
    assert task.describe() == "mqar(pairs=4, keys=8, values=8, length=24, power=0.01, eval_lengths=[64])"
    assert mqar(pairs=4, keys=8, values=8).describe() == "mqar(pairs=4, keys=8, values=8)"


def test_long_mqar_is_a_function_of_seed_and_step():
    task = mqar(pairs=4, keys=16, values=16, length=32)
    a = task.batch(3, 16, kind="lm", seed=5)
    assert torch.equal(a.ids, mqar(pairs=4, keys=16, values=16, length=32).batch(3, 16, kind="lm", seed=5).ids)
    assert not torch.equal(a.ids, task.batch(3, 16, kind="lm", seed=6).ids)
    assert not torch.equal(a.ids, task.batch(4, 16, kind="lm", seed=5).ids)


def test_long_mqar_train_and_eval_never_overlap():
    # 3 * 2 ordered keys x 4 value pairs x 2 query orders = 48 sources: each drawn many times.
    task = mqar(pairs=2, keys=3, values=2, length=8, eval_size=64)
    held_out = _rows(task.eval_batches(8, "lm", batch_size=64)[0].ids)
    trained = set()
    for step in range(50):
        trained |= _rows(task.batch(step, 64, kind="lm").ids)
    assert held_out and trained and not held_out & trained
    assert len(held_out | trained) == 48


def test_long_mqar_query_offsets_follow_the_power_law():
    # With one query the offset g in [0, slots) has probability (g + 1) ** (power - 1) / sum.
    slots, draws = 6, 20000
    for power in (0.01, 0.5, 1.0):
        task = mqar(pairs=4, keys=8, values=8, queries=1, length=8 + 2 * slots, power=power)
        source = task.sample(task.length, draws, torch.Generator().manual_seed(0)).source
        offset = ((source[:, 8:] != task.filler_id).float().argmax(-1)) // 2
        counts = torch.bincount(offset, minlength=slots).double() / draws
        weights = torch.tensor([(g + 1) ** (power - 1) for g in range(slots)], dtype=torch.float64)
        torch.testing.assert_close(counts, weights / weights.sum(), atol=0.015, rtol=0)


def test_long_mqar_accuracy_counts_the_query_positions_only():
    from plugformer.tasks.metrics import batch_metrics

    task = mqar(pairs=4, keys=8, values=8, length=32)
    batch = task.batch(0, 8, kind="lm")
    scored = batch.targets != IGNORE_INDEX
    logits = torch.zeros(*batch.ids.shape, task.vocab_size)
    logits[scored] = torch.nn.functional.one_hot(batch.targets[scored], task.vocab_size).float()
    result = batch_metrics(logits, batch.targets)
    assert result["tokens"] == 8 * 4 and result["correct"] == 8 * 4
    first_query = scored.float().argmax(-1)
    logits[torch.arange(8), first_query] = 0.0
    logits[torch.arange(8), first_query, task.filler_id] = 1.0
    assert batch_metrics(logits, batch.targets)["correct"] == 8 * 3


@pytest.mark.parametrize("make, message", [
    (lambda: mqar(pairs=8, keys=8, length=30), "length=30 leaves 7 query slots after 8 pairs for 8 "
                                               "queries; use length >= 32"),
    (lambda: mqar(pairs=4, length=32, eval_lengths=[10]), "length=10 leaves 1 query slots"),
    (lambda: mqar(pairs=4, length=32, power=0), "power must be > 0"),
    (lambda: mqar(pairs=80, keys=64, length=512), "keys=64 cannot make 80 distinct keys"),
])
def test_long_mqar_bad_arguments(make, message):
    with pytest.raises(ValueError, match=message):
        make()
