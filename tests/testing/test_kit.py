"""The conformance kit catches each deliberately broken part (tests/testing/broken_parts.py) with
the check named for its defect, and passes it on every check its defect does not imply."""

from __future__ import annotations

import pytest

from plugformer.cli import main
from plugformer.registry.registry import default_registry
from plugformer.testing import CHECK_NAMES, causality, run_check, run_checks

from tests.testing import broken_parts

# part -> (the check named for its defect, checks that fail as a consequence of the same defect)
BROKEN = {
    ("attention", "peek"): ("causality", {
        "cached_decoding",  # a cache holds no future token to peek at
        "capabilities",  # causal=True no longer equals the lower-triangular mask
    }),
    ("attention", "cache_drift"): ("cached_decoding", set()),
    ("attention", "pad_leak"): ("padding_invariance", {
        "masked_rows_finite",  # a row whose keys are all padding attends to its pads instead of giving zeros
    }),
    ("attention", "nan_rows"): ("masked_rows_finite", {
        "padding_invariance",  # a left pad's query has no key: its NaN reaches real tokens through 0 * NaN
    }),
    ("attention", "ignores_cache"): ("capabilities", set()),
    ("attention", "dead_parameter"): ("gradients_reach_parameters", set()),
    ("attention", "breaks_graph"): ("compile_fullgraph", set()),
    ("positional", "bad_bias_shape"): ("shapes_dtypes", set()),
    ("feedforward", "upcast"): ("shapes_dtypes", set()),
}


@pytest.fixture
def broken():
    registry = default_registry()
    name = registry.register_plugin(broken_parts, name="kit_broken_parts")
    yield registry
    registry.unregister_plugin(name)


@pytest.mark.parametrize(("kind", "name"), list(BROKEN), ids=[name for _, name in BROKEN])
def test_a_broken_part_is_caught_by_the_check_named_for_its_defect(broken, kind, name):
    caught, consequences = BROKEN[kind, name]
    results = {timed.result.name: timed.result for timed in run_checks(name, kind, registry=broken)}
    assert results[caught].failed, results[caught]
    assert "raised" not in results[caught].message  # found by the check, not by a crash
    assert {check for check, result in results.items() if result.failed} == {caught} | consequences


def test_messages_say_what_differed_and_where(broken):
    peek = causality("peek", "attention", registry=broken)
    assert "position 0 sees the future" in peek.message
    upcast = run_check("shapes_dtypes", "upcast", "feedforward", registry=broken)
    assert upcast.message == "torch.bfloat16 in: output comes out torch.float32"
    bias = run_check("shapes_dtypes", "bad_bias_shape", "positional", registry=broken)
    assert "score_bias(q_pos (6,), k_pos (6,)) has shape (4, 6, 6), expected" in bias.message
    dead = run_check("gradients_reach_parameters", "dead_parameter", "attention", registry=broken)
    assert dead.message == "Hkv=4, Lq=12, Lk=12: no gradient reaches temperature"


def test_a_check_that_does_not_apply_says_why():
    result = run_check("kernel_swap", "relu", "feedforward")
    assert result.status == "not_applicable"
    assert "only attention kernels" in result.message


def test_unknown_checks_and_parts_are_refused_with_the_choices():
    with pytest.raises(ValueError, match="unknown check 'causal'; checks: shapes_dtypes"):
        run_check("causal", "dense", "attention")
    with pytest.raises(LookupError, match="did you mean 'dense'"):
        run_check("causality", "dnese", "attention")
    with pytest.raises(ValueError, match="not 'model'"):
        run_check("causality", "gpt_tiny", "model")


def test_check_command_exits_1_on_a_failure_and_0_on_a_pass(broken, capsys):
    assert main(["check", "upcast", "--kind", "feedforward", "-c", "shapes_dtypes"], registry=broken) == 1
    out = capsys.readouterr().out
    assert "feedforward:upcast" in out and "failed" in out and "comes out torch.float32" in out
    assert main(["check", "relu", "-c", "shapes_dtypes", "-c", "kernel_swap"], registry=broken) == 0
    assert "1 passed, 0 failed, 1 not applicable" in capsys.readouterr().out


def test_check_command_needs_exactly_one_target(capsys):
    assert main(["check"]) == 2
    assert "exactly one" in capsys.readouterr().err


def test_every_check_has_a_public_function():
    import plugformer.testing as kit

    assert all(callable(getattr(kit, name)) for name in CHECK_NAMES)


# The pytest plugin: one test per check, through `conformance_tests`.
from plugformer.testing import conformance_tests  # noqa: E402

test_layernorm_through_the_plugin = conformance_tests("norm", "layernorm", checks=["shapes_dtypes", "kernel_swap"])
