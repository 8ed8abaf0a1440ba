"""Cost to reach a target, on a hand-made learning curve."""

import pytest

from plugformer.compare.cost import Reached, cost_to_reach, training_flops

FLOPS_PER_STEP = 2.5e9
CURVE = [
    {"step": step, "seconds": 0.04 * step, "flops": training_flops(step, FLOPS_PER_STEP),
     "exact_match@16": em, "loss@16": loss}
    for step, em, loss in [(50, 0.0, 3.1), (100, 0.4, 1.2), (150, 0.99, 0.3), (200, 1.0, 0.05)]
]


def test_first_point_at_or_past_the_target():
    assert cost_to_reach(CURVE, 0.99, metric="exact_match@16") == Reached(
        step=150, seconds=0.04 * 150, flops=150 * FLOPS_PER_STEP, value=0.99)
    assert cost_to_reach(CURVE, 0.3, metric="exact_match@16").step == 100


def test_never_reached_is_none():
    assert cost_to_reach(CURVE, 1.01, metric="exact_match@16") is None
    assert cost_to_reach([], 0.5, metric="exact_match@16") is None


def test_lower_is_better_from_the_name_or_given():
    assert cost_to_reach(CURVE, 0.3, metric="loss@16").step == 150
    assert cost_to_reach(CURVE, 0.3, metric="loss@16", higher_is_better=True).step == 50


def test_points_out_of_order_missing_or_nan_are_handled():
    shuffled = [CURVE[3], {"step": 120, "exact_match@16": float("nan")}, CURVE[2],
                {"step": 130, "seconds": 5.0}, CURVE[0]]
    got = cost_to_reach(shuffled, 0.99, metric="exact_match@16")
    assert got.step == 150
    no_costs = cost_to_reach([{"step": 7, "accuracy": 0.5}], 0.5, metric="accuracy")
    assert no_costs == Reached(step=7, seconds=None, flops=None, value=0.5)


def test_training_flops():
    assert training_flops(10, 3.0) == 30.0
    assert training_flops(10, None) is None


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="target must be a finite number, got nan"):
        cost_to_reach(CURVE, float("nan"), metric="exact_match@16")
    with pytest.raises(ValueError, match="a curve point has 'accuracy' but no 'step'"):
        cost_to_reach([{"accuracy": 0.5}], 0.5, metric="accuracy")
