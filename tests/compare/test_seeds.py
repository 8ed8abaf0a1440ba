"""compare() over seeds and a learning-rate grid (compare/runner.py, runs.py, summary.py):
determinism, marks against the best, the rate chosen on the validation split."""

from __future__ import annotations

import math

import torch

from plugformer.compare import compare
from plugformer.compare.stats import compare_to_best
from plugformer.compare.summary import verdicts

SMALL = "transformer_tiny(d_model=32, heads=2, layers=1, ffn=relu(d_ff=64), attn={attn})"
TASK = "copy(length=6, vocab=8, eval_size=32)"
EASY = "copy(length=4, vocab=4, eval_size=64)"
FAST = dict(batch=8, timing_repeats=1, progress=False, curve_points=2)


def _numbers(result):
    return [(r.variant, r.seed, r.lr, r.status, r.losses, r.metrics, [
        {k: v for k, v in p.items() if k != "seconds"} for p in r.curve]) for r in result.runs]


def test_same_seeds_give_identical_numbers_run_twice():
    spec = SMALL.format(attn="{dense, fused}")
    first = compare(spec, TASK, steps=6, seeds=2, lr=[1e-3, 1e-2], **FAST)
    second = compare(spec, TASK, steps=6, seeds=2, lr=[1e-3, 1e-2], **FAST)
    assert len(first.runs) == 2 * 2 * 2
    assert _numbers(first) == _numbers(second)
    assert {(r.seed, r.lr) for r in first.runs} == {(s, lr) for s in (0, 1) for lr in (1e-3, 1e-2)}
    # seeds really differ: initialisation and data order
    by_seed = {r.seed: r.losses for r in first.runs if r.variant == "attn=dense" and r.lr == 1e-3}
    assert by_seed[0] != by_seed[1]


def test_a_variant_against_itself_under_other_seeds_is_never_distinguishable():
    result = compare(SMALL.format(attn="dense"), EASY, steps=30, seeds=8, lr=1e-2, **FAST)
    em = {r.seed: r.metrics["exact_match@4"] for r in result.runs}
    assert len(em) == 8 and len(set(em.values())) > 1  # the seeds do give different numbers
    for first, second in ((range(0, 4), range(4, 8)), (range(0, 8, 2), range(1, 8, 2)),
                          ((0, 1, 6, 7), (2, 3, 4, 5))):
        halves = {"a": {i: em[s] for i, s in enumerate(first)},
                  "b": {i: em[s] for i, s in enumerate(second)}}
        marks = {v.mark for v in compare_to_best(halves, higher_is_better=True).values()}
        assert marks <= {"best", "tied"}, (first, second, halves)
    # the same variant twice in one comparison: paired seeds give identical numbers, a tie
    twice = compare([SMALL.format(attn="dense")] * 2, EASY, steps=10, seeds=2, lr=1e-2, **FAST)
    assert sorted(v.mark for v in verdicts(twice).values()) == ["best", "tied"]


def test_a_variant_that_cannot_learn_is_marked_worse_at_two_and_three_seeds(blind_registry):
    result = compare(SMALL.format(attn="{blind, dense}"), EASY, steps=120, seeds=3, lr=1e-2,
                     batch=32, timing_repeats=1, progress=False, curve_points=0,
                     registry=blind_registry)
    em = {(r.variant, r.seed): r.metrics["exact_match@4"] for r in result.runs}
    for seeds in (2, 3):
        values = {v: {s: em[(v, s)] for s in range(seeds)} for v in ("attn=blind", "attn=dense")}
        marks = compare_to_best(values, higher_is_better=True)
        assert marks["attn=dense"].mark == "best", values
        assert marks["attn=blind"].mark == "worse", values
    shown = verdicts(result)
    assert shown["attn=blind"].mark == "worse" and shown["attn=dense"].mark == "best"
    table = result.table()
    assert "worse" in table and "95% Student-t" in table


def test_the_reported_rate_is_the_best_on_validation_never_the_divergent_one():
    rates = [1e-3, 1e-2, 1e4]
    result = compare(SMALL.format(attn="{dense, fused}"), EASY, steps=40, seeds=2, lr=rates,
                     batch=16, timing_repeats=1, progress=False, curve_points=0)
    for row in result.rows:
        runs = [r for r in result.runs if r.variant == row.label]
        diverged = [r for r in runs if r.lr == 1e4]
        assert diverged and all(r.status == "failed" or r.metrics["val_exact_match@4"] <= 0.5
                                for r in diverged)

        def mean_val(rate):
            values = [r.metrics.get("val_exact_match@4") for r in runs if r.lr == rate and r.status == "ok"]
            return sum(values) / len(values) if values and len(values) == 2 else -math.inf

        best = max(mean_val(rate) for rate in rates)
        assert row.lr != 1e4
        assert mean_val(row.lr) == best
        assert row.lr == next(rate for rate in rates if mean_val(rate) == best)
        assert row.seeds == [0, 1] and "val_exact_match@4" in row.lr_choice
    assert f"{result.rows[0].lr:g}" in result.table()
    # the validation split is not the eval split: same kind of examples, different ones
    from plugformer.tasks import make_task

    task = make_task(EASY)
    held_out = {tuple(row.tolist()) for b in task.eval_batches(4, "encdec") for row in b.src}
    validation = {tuple(row.tolist()) for b in task.validation_batches(4, "encdec") for row in b.src}
    assert validation and not held_out & validation


def test_validation_examples_come_from_the_training_split():
    from plugformer.tasks import make_task
    from plugformer.tasks.base import split_of

    for spec, kind in (("copy(length=8)", "encdec"), ("mqar(pairs=4)", "lm"), ("sort", "encdec")):
        task = make_task(spec)
        batches = task.validation_batches(task.length, kind)
        assert sum(b.targets.shape[0] for b in batches) == task.eval_size
        source = torch.cat([b.src if kind == "encdec" else b.ids for b in batches])
        if kind == "encdec":
            assert bool((split_of(source) != 0).all())
        again = task.validation_batches(task.length, kind)
        assert all(torch.equal(a.targets, b.targets) for a, b in zip(batches, again))
