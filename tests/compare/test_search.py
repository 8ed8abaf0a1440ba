"""Successive halving under a step budget (compare/search.py)."""

from __future__ import annotations

import pytest

from plugformer.compare import compare
from plugformer.compare.search import Candidate, annotate, plan_rungs, successive_halving
from plugformer.compare.store import RunRecord

SMALL = "transformer_tiny(d_model=32, heads=2, layers=1, ffn=relu(d_ff=64), attn={attn})"
EASY = "copy(length=4, vocab=4, eval_size=64)"


@pytest.mark.parametrize("candidates, budget, seeds", [(1, 5, 1), (2, 40, 3), (3, 100, 1),
                                                       (6, 1000, 2), (9, 777, 3), (16, 5000, 1)])
def test_rungs_never_spend_more_than_the_budget(candidates, budget, seeds):
    rungs, survivors = plan_rungs(candidates, budget, seeds)
    assert rungs[0].candidates == candidates and survivors == rungs[-1].candidates <= 2
    for before, after in zip(rungs, rungs[1:]):
        assert after.candidates == -(-before.candidates // 2)  # the better half goes on
        assert after.steps >= 2 * before.steps - 1 and after.steps >= 1
    total = sum(r.candidates * r.steps for r in rungs) + survivors * (seeds - 1) * rungs[-1].steps
    assert total <= budget
    assert total > budget - sum(r.candidates for r in rungs) - survivors * (seeds - 1)  # little left over


def test_a_budget_too_small_says_the_least_that_works():
    with pytest.raises(ValueError, match=r"--budget 5 is too small .* needs at least 8 steps"):
        plan_rungs(4, 5, 1)


def _fake_run(quality):
    calls = []

    def run(candidate, seed, steps):
        calls.append((candidate, seed, steps))
        value = quality[candidate] * min(1.0, steps / 100) + 0.001 * seed
        return RunRecord(variant=candidate.variant, spec=candidate.variant, task="t", seed=seed,
                         lr=candidate.lr, steps=steps, steps_done=steps, primary="exact_match@4",
                         metrics={"val_exact_match@4": value})

    return run, calls


def test_the_better_half_goes_on_and_the_winner_is_named():
    quality = {Candidate(v, lr): q for (v, lr), q in zip(
        [("a", 1e-3), ("a", 1e-2), ("b", 1e-3), ("b", 1e-2), ("c", 1e-3)], [0.2, 0.9, 0.5, 0.6, 0.1])}
    run, calls = _fake_run(quality)
    records, summary = successive_halving(list(quality), budget=600, seeds=[0, 1, 2], run=run,
                                          metric="val_exact_match@4")
    assert sum(steps for _, _, steps in calls) == summary["spent"] <= 600
    got = {(c["variant"], c["lr"]): c for c in summary["candidates"]}
    assert summary["winner"]["variant"] == "a" and summary["winner"]["lr"] == 1e-2
    assert got[("a", 1e-2)]["steps"] > got[("c", 1e-3)]["steps"]
    assert "stopped after rung 1" in got[("c", 1e-3)]["reason"]
    assert "survived" in got[("a", 1e-2)]["reason"]
    assert {seed for c, seed, _ in calls if c == Candidate("a", 1e-2)} == {0, 1, 2}
    assert {seed for c, seed, _ in calls if c == Candidate("c", 1e-3)} == {0}
    noted = annotate(records, summary)
    stopped = got[("c", 1e-3)]
    assert [r.error for r in noted if r.variant == "c"] == [
        f"{stopped['steps']} steps in all; {stopped['reason']}"]


@pytest.mark.slow
def test_a_budget_goes_to_the_variant_that_learns(blind_registry):
    budget = 480
    result = compare(SMALL.format(attn="{blind, dense}"), EASY, budget=budget, lr=[3e-3, 1e-2],
                     seeds=2, batch=32, timing_repeats=1, progress=False, curve_points=0,
                     registry=blind_registry)
    search = result.search
    assert sum(r.steps for r in result.runs) == search["spent"] <= budget
    steps = {(c["variant"], c["lr"]): c["steps"] for c in search["candidates"]}
    assert search["winner"]["variant"] == "attn=dense"
    best = (search["winner"]["variant"], search["winner"]["lr"])
    assert steps[best] > min(steps.values())
    assert max(steps.values()) == steps[best]
    assert all(steps[("attn=blind", lr)] < steps[best] for lr in (3e-3, 1e-2))
    assert "successive halving" in result.table() and "winner attn=dense" in result.table()
