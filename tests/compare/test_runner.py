"""compare() (compare/runner.py): equal terms for every variant, and what happens when one fails."""

from __future__ import annotations

import math

import pytest
import torch

from plugformer.compare import CompareError, Progress, compare
from plugformer.core.interfaces import AttentionKernel
from plugformer.registry.errors import SpecError
from plugformer.registry.registry import Registry

SMALL = "transformer_tiny(d_model=32, heads=2, layers=1, ffn=relu(d_ff=64))"
SMALL_ATTN = "transformer_tiny(d_model=32, heads=2, layers=1, ffn=relu(d_ff=64), attn={attn})"
TASK = "copy(length=6, vocab=8, eval_size=32)"
FAST = dict(steps=6, batch=8, timing_repeats=1)


def _scores(result):
    return [(row.losses, [(e.loss, e.accuracy, e.exact_match) for e in row.evals]) for row in result.rows]


def test_same_seed_same_losses_and_scores():
    specs = SMALL_ATTN.format(attn="dense")
    first = compare(specs, TASK, seed=3, eval_lengths=[8], **FAST)
    second = compare(specs, TASK, seed=3, eval_lengths=[8], **FAST)
    assert _scores(first) == _scores(second)
    other = compare(specs, TASK, seed=4, eval_lengths=[8], **FAST)
    assert _scores(other)[0][0] != _scores(first)[0][0]


def test_dense_and_fused_learn_the_same_curve():
    result = compare(SMALL_ATTN.format(attn="{dense, fused}"), TASK, steps=20, batch=16,
                     timing_repeats=1, lr=1e-2)
    dense, fused = result.rows
    assert dense.ok and fused.ok
    assert len(dense.losses) == 20
    torch.testing.assert_close(torch.tensor(fused.losses), torch.tensor(dense.losses),
                               rtol=1e-3, atol=1e-4)
    assert dense.params == fused.params and dense.flops_fwd == fused.flops_fwd


def test_rows_describe_how_variants_differ():
    specs = ("transformer_tiny(d_model=32, heads=2, layers=1, ffn=relu(d_ff=64), "
             "attn={dense, fused(backend='math')}, pe={sinusoidal, learned})")
    result = compare(specs, TASK, **FAST)
    assert [row.label for row in result.rows] == [
        "attn=dense, pe=sinusoidal", "attn=dense, pe=learned",
        "attn=fused(backend='math'), pe=sinusoidal", "attn=fused(backend='math'), pe=learned"]
    row = result.rows[3]
    assert row.differs == {"attn": "fused(backend='math')", "pe": "learned"}
    assert row.spec.startswith("transformer_tiny(") and "vocab=11" in row.spec
    assert row.kind == "encdec" and row.steps_done == FAST["steps"]
    assert row.params > result.rows[2].params  # learned positions add a table
    for row in result.rows:
        assert row.flops_fwd > 0 and row.flops_fwd_bwd > row.flops_fwd
        assert row.time_fwd_s > 0 and row.time_fwd_bwd_s > 0
        assert row.mem_fwd_bwd_bytes > 0 and row.train_s > 0
        assert [e.length for e in row.evals] == [6]
    assert result.primary_metric == "exact_match" and result.task.startswith("copy(length=6")


def test_a_list_of_specs_and_different_models():
    result = compare(["gpt_tiny(attn=dense)", "gpt_tiny(layers=1)"], "mqar(pairs=3, keys=8, values=8, eval_size=16)",
                     **FAST)
    assert [row.kind for row in result.rows] == ["lm", "lm"]
    assert result.rows[0].label == "layers=2, attn=dense"
    assert result.rows[1].label == "layers=1, attn=fused"
    assert result.primary_metric == "accuracy"


def test_unknown_task_suggests_the_closest():
    with pytest.raises(SpecError, match="did you mean 'copy'"):
        compare(SMALL, "cpy", **FAST)


def test_task_arguments_are_checked():
    with pytest.raises(SpecError, match="length"):
        compare(SMALL, "copy(lenght=4)", **FAST)
    with pytest.raises(SpecError, match="keys=4 cannot make 8 distinct keys"):
        compare("gpt_tiny", "mqar", task_args={"keys": 4}, **FAST)


@pytest.mark.parametrize("specs, message", [
    ([SMALL, SMALL_ATTN.format(attn="dnse")], r"variant 2 of 2 .*unknown attention 'dnse'(.|\n)*did you mean 'dense'"),
    (SMALL_ATTN.format(attn="{dense, bra(topk=0)}"), r"variant 2 of 2 \(.*bra\(topk=0\)"),
    (["transformer_tiny(heads=5)"], r"variant 1 of 1 .*"),
    ([SMALL, "gpt_tiny"], r"variant 2 of 2 \(gpt_tiny\): task 'copy' serves encdec models, and this is an 'lm'"),
    ([SMALL, "transformer_tiny(attn=dense"], r"spec 2 of 2: "),
])
def test_a_variant_that_does_not_build_stops_before_training(specs, message):
    events: list[Progress] = []
    with pytest.raises(CompareError, match=message):
        compare(specs, TASK, progress=events.append, **FAST)
    assert events == []


class NaNAttention(AttentionKernel):
    """Returns NaN: a broken custom kernel."""

    def forward(self, q, k, v, *, mask=None, causal=False, score_bias=None):
        return torch.full_like(q, math.nan)


class RaisingAttention(AttentionKernel):
    """Raises at run time, after building fine."""

    def forward(self, q, k, v, *, mask=None, causal=False, score_bias=None):
        raise RuntimeError("kernel exploded")


@pytest.fixture
def registry():
    registry = Registry(autoload=True)
    registry.add("attention", "nan_kernel", lambda ctx: NaNAttention())
    registry.add("attention", "raising", lambda ctx: RaisingAttention())
    return registry


def test_a_variant_failing_at_run_time_is_recorded_and_the_others_finish(registry):
    events: list[Progress] = []
    result = compare(SMALL_ATTN.format(attn="{dense, nan_kernel, raising, fused}"), TASK,
                     registry=registry, progress=events.append, **FAST)
    dense, nan, raising, fused = result.rows
    assert dense.ok and fused.ok and len(fused.losses) == FAST["steps"] and fused.evals
    assert nan.status == "failed" and nan.error == "non-finite loss (nan) at step 0"
    assert nan.steps_done == 0 and nan.evals == [] and nan.flops_fwd > 0
    assert raising.status == "failed" and "kernel exploded" in raising.error
    assert raising.error.startswith("while measuring: RuntimeError")
    failed = [(e.variant, e.message) for e in events if e.stage == "failed"]
    assert failed == [(1, nan.error), (2, raising.error)]
    assert "failed:" in result.table() and nan.error in result.table()


def test_progress_reports_every_step():
    events: list[Progress] = []
    compare(SMALL, TASK, progress=events.append, **FAST)
    train = [e.step for e in events if e.stage == "train"]
    assert train == list(range(1, FAST["steps"] + 1))
    assert [e.stage for e in events][-1] == "done"
    assert {e.variants for e in events} == {1}


def test_bad_settings():
    with pytest.raises(ValueError, match="steps and batch must be >= 1"):
        compare(SMALL, TASK, steps=0)
    with pytest.raises(ValueError, match="schedule must be one of"):
        compare(SMALL, TASK, schedule="linear")


def test_plugformer_compare_is_callable_however_it_was_imported():
    import plugformer
    import plugformer.compare.cli  # noqa: F401  (imports the package, which sets plugformer.compare)

    result = plugformer.compare(SMALL, TASK, steps=1, batch=2, timing_repeats=1)
    assert result.rows[0].ok


def test_bad_step_settings_say_what_would_be_right():
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16, got 'fp16'"):
        compare(SMALL, TASK, precision="fp16")
    with pytest.raises(ValueError, match="--batch 8 .* does not split evenly into 1 rank.s. x 3 "
                                         "micro-batch.es."):
        compare(SMALL, TASK, batch=8, grad_accum=3)


def test_grad_accum_makes_the_updates_of_the_whole_batch():
    # dropout 0 (transformer_tiny's default): the only difference is how the batch is split,
    # so the loss after each update agrees to float tolerance (Adam's first step, g / |g|,
    # makes near-zero gradient entries sensitive to rounding: a loose-ish tolerance).
    whole = compare(SMALL, TASK, steps=3, batch=8, timing_repeats=1)
    split = compare(SMALL, TASK, steps=3, batch=8, timing_repeats=1, grad_accum=4)
    assert whole.rows[0].ok and split.rows[0].ok
    assert split.rows[0].losses[0] == pytest.approx(whole.rows[0].losses[0], rel=1e-6)
    assert split.rows[0].losses == pytest.approx(whole.rows[0].losses, rel=1e-3)
    assert split.settings["grad_accum"] == 4


def _linear_output_dtypes():
    """Collect the output dtype of every nn.Linear call while the context is open."""
    seen: set[torch.dtype] = set()

    def hook(module, args, output):
        if isinstance(module, torch.nn.Linear):
            seen.add(output.dtype)

    return seen, torch.nn.modules.module.register_module_forward_hook(hook)


@pytest.mark.parametrize("precision, dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_precision_bf16_really_autocasts(precision, dtype):
    seen, handle = _linear_output_dtypes()
    try:
        result = compare(SMALL, TASK, steps=2, batch=4, timing_repeats=1, precision=precision)
    finally:
        handle.remove()
    assert result.rows[0].ok, result.rows[0].error
    assert seen == {dtype}
    assert result.settings["precision"] == precision


def test_compile_compiles_every_block(monkeypatch):
    from torch._dynamo.utils import counters

    from plugformer.compare import runner
    from plugformer.train.step import compile_blocks

    compiled: list[int] = []

    def eager_compile(model):  # graph capture without inductor's minutes of code generation
        compiled.append(compile_blocks(model, backend="eager"))
        return compiled[-1]

    monkeypatch.setattr(runner, "compile_blocks", eager_compile)
    torch._dynamo.reset()
    counters.clear()
    result = compare(SMALL, TASK, steps=2, batch=4, timing_repeats=1, compile=True)
    assert result.rows[0].ok, result.rows[0].error
    assert compiled == [2, 2]  # one encoder and one decoder block: the measured model, the run's
    assert counters["stats"]["unique_graphs"] > 0
    assert result.settings["compile"] is True
    torch._dynamo.reset()
