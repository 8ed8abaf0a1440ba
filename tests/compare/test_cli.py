"""``plugformer compare`` (compare/cli.py): arguments, output files, errors before training."""

from __future__ import annotations

import argparse

import pytest

from plugformer.compare import Comparison
from plugformer.compare import cli as compare_cli

SMALL = "transformer_tiny(d_model=32, heads=2, layers=1, ffn=relu(d_ff=64), attn={dense, fused})"
TASK = "copy(length=6, vocab=8, eval_size=32)"


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="plugformer compare")
    compare_cli.add_compare_arguments(parser)
    return parser.parse_args(argv)


def test_runs_prints_the_table_and_writes_the_files(tmp_path, capsys):
    out = tmp_path / "results"
    status = compare_cli.run_compare_command(_args(
        SMALL, "--task", TASK, "--steps", "3", "--batch", "8", "--timing-repeats", "1",
        "--eval-lengths", "8", "--out", str(out)))
    assert status == 0
    printed = capsys.readouterr().out
    assert "attn=dense" in printed and "attn=fused" in printed and "EM@8" in printed
    assert sorted(p.name for p in out.iterdir()) == [
        "comparison.png", "report.html", "results.csv", "results.json", "runs.jsonl", "table.md"]
    result = Comparison.from_json(out / "results.json")
    assert result.settings["steps"] == 3 and result.lengths == [6, 8]


def test_unwritable_out_fails_before_training(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setattr("plugformer.compare.runner.compare",
                        lambda *a, **k: pytest.fail("trained despite an unwritable --out"))
    with pytest.raises(ValueError, match="cannot write results to --out .*a-file/sub"):
        compare_cli.run_compare_command(_args(SMALL, "--out", str(blocker / "sub")))


def test_needs_a_spec_or_demo():
    with pytest.raises(ValueError, match="give at least one SPEC"):
        compare_cli.run_compare_command(_args())


@pytest.mark.parametrize("text, expected", [("32,64", [32, 64]), (" 8 ", [8]), (None, None)])
def test_parse_lengths(text, expected):
    assert compare_cli.parse_lengths(text) == expected


@pytest.mark.parametrize("text", ["32;64", "a", "0,4"])
def test_parse_lengths_rejects(text):
    with pytest.raises(ValueError, match="--eval-lengths"):
        compare_cli.parse_lengths(text)


def test_demo_fills_in_defaults_and_flags_override_them(monkeypatch):
    seen = {}

    def fake_compare(specs, task, **kwargs):
        seen.update(specs=specs, task=task, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr("plugformer.compare.runner.compare", fake_compare)
    with pytest.raises(KeyboardInterrupt):
        compare_cli.run_compare_command(_args("--demo", "--steps", "7"))
    assert seen["specs"] == compare_cli.DEMO["specs"] and seen["task"] == compare_cli.DEMO["task"]
    assert seen["steps"] == 7 and seen["lr"] == compare_cli.DEMO["lr"]
    assert "bra(region=4, topk=2)" in seen["specs"][0]


def test_threads_sets_torchs_thread_count_before_training(monkeypatch):
    import torch

    calls = []

    def fake_compare(*args, **kwargs):
        calls.append("train")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    monkeypatch.setattr("plugformer.compare.runner.compare", fake_compare)
    with pytest.raises(KeyboardInterrupt):
        compare_cli.run_compare_command(_args(SMALL, "--threads", "1"))
    assert calls == [1, "train"]
    with pytest.raises(ValueError, match="--threads must be at least 1, got 0"):
        compare_cli.run_compare_command(_args(SMALL, "--threads", "0"))


def test_failed_variant_gives_status_1(capsys):
    import math

    import torch

    from plugformer.core.interfaces import AttentionKernel
    from plugformer.registry.registry import Registry

    class NaNAttention(AttentionKernel):
        def forward(self, q, k, v, *, mask=None, causal=False, score_bias=None):
            return torch.full_like(q, math.nan)

    registry = Registry(autoload=True)
    registry.add("attention", "nan_kernel", lambda ctx: NaNAttention())
    args = _args(SMALL.replace("fused", "nan_kernel"), "--task", TASK, "--steps", "2", "--batch", "4",
                 "--timing-repeats", "1")
    args.registry = registry
    assert compare_cli.run_compare_command(args) == 1
    assert "non-finite loss (nan) at step 0" in capsys.readouterr().out


def test_step_options_reach_compare_and_default_to_the_old_behaviour(monkeypatch):
    seen = []

    def fake_compare(*args, **kwargs):
        seen.append(kwargs)
        return Comparison(rows=[], task="copy", primary_metric="exact_match", lengths=[6], settings={})

    monkeypatch.setattr("plugformer.compare.runner.compare", fake_compare)
    compare_cli.run_compare_command(_args(SMALL, "--precision", "bf16", "--compile", "--grad-accum", "4"))
    compare_cli.run_compare_command(_args(SMALL))
    given, default = seen
    assert (given["precision"], given["compile"], given["grad_accum"]) == ("bf16", True, 4)
    assert (default["precision"], default["compile"], default["grad_accum"]) == ("fp32", False, 1)
    assert default["schedule"] == "onecycle"
    with pytest.raises(SystemExit):
        _args(SMALL, "--precision", "fp16")
