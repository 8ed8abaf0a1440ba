"""The task machinery of plugformer/tasks/base.py: batches from (seed, step), the held-out set,
and the train/eval split, checked in a space small enough that a naive split would collide."""

from __future__ import annotations

import pytest
import torch

from plugformer.tasks.base import SPLIT_BUCKETS, split_of
from plugformer.tasks.synthetic import copy, mqar, reverse

def _rows(tensor: torch.Tensor) -> set[tuple[int, ...]]:
    return {tuple(row) for row in tensor.tolist()}


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


def test_a_space_with_one_example_says_which_split_is_empty():
    task = copy(length=1, vocab=1)  # the only source is [3]
    held_out = int(split_of(torch.tensor([[task.first_token]]))) == 0
    with pytest.raises(ValueError, match="too few training examples" if held_out else "too few held-out examples"):
        task.eval_batches(1, "encdec") if not held_out else task.batch(0, 4, kind="encdec")
