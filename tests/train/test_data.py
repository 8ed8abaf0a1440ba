"""The split of a step's global batch across ranks and micro-batches."""

from __future__ import annotations

import pytest
import torch

from plugformer.compare import make_task
from plugformer.tasks.base import IGNORE_INDEX
from plugformer.train.data import BatchPlan, input_tokens, scored_tokens, slice_rows


@pytest.mark.parametrize("world, accum", [(1, 1), (1, 4), (2, 1), (2, 2), (4, 1), (3, 2)])
def test_every_layout_covers_the_global_batch_once(world, accum):
    plan = BatchPlan(12 if world == 3 else 8, world, accum)
    taken = [i for rank in range(world) for micro in range(accum)
             for i in range(plan.global_batch)[plan.rows(rank, micro)]]
    assert sorted(taken) == list(range(plan.global_batch))
    assert plan.micro_rows * world * accum == plan.global_batch


def test_a_world_size_that_does_not_divide_the_batch_says_what_fits():
    with pytest.raises(ValueError) as err:
        BatchPlan(6, world=4, accum=1)
    message = str(err.value)
    assert "--batch 6" in message and "4 rank(s) x 1 micro-batch(es)" in message
    assert "multiple of 4" in message


def test_grad_accum_counts_in_the_split():
    with pytest.raises(ValueError, match=r"2 rank\(s\) x 3 micro-batch\(es\).*multiple of 6, e.g. 6"):
        BatchPlan(8, world=2, accum=3)


@pytest.mark.parametrize("kwargs", [dict(global_batch=0), dict(global_batch=4, accum=0)])
def test_sizes_below_one_are_refused(kwargs):
    with pytest.raises(ValueError, match="must be >= 1"):
        BatchPlan(**kwargs)


def test_rows_outside_the_plan_are_refused():
    with pytest.raises(ValueError, match="rank 2"):
        BatchPlan(8, 2, 1).rows(2, 0)


def test_slices_of_a_batch_put_back_together_give_the_batch():
    task = make_task("copy(length=5, vocab=8)")
    batch = task.batch(3, 8, kind="encdec", seed=1)
    plan = BatchPlan(8, world=2, accum=2)
    parts = [slice_rows(batch, plan.rows(rank, micro)) for micro in range(2) for rank in range(2)]
    for name in ("src", "tgt_in", "tgt_out"):
        assert torch.equal(torch.cat([getattr(p, name) for p in parts]), getattr(batch, name))
    assert sum(scored_tokens(p) for p in parts) == scored_tokens(batch)


def test_token_counts():
    lm = make_task("mqar(pairs=4, queries=2)").batch(0, 3, kind="lm", seed=0)
    assert scored_tokens(lm) == int((lm.targets != IGNORE_INDEX).sum()) == 3 * 2
    assert input_tokens(lm) == 3 * (2 * 4 + 2)
    seq = make_task("copy(length=5)").batch(0, 3, kind="encdec", seed=0)
    assert input_tokens(seq) == 3 * 5 + 3 * 6
