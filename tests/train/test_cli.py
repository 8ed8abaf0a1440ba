"""``plugformer train`` options and exit codes, in one process (``python -m plugformer.train``)."""

from __future__ import annotations

import argparse

from plugformer.train.__main__ import main
from plugformer.train.cli import add_train_arguments

ARGS = ["gpt_tiny(layers=1)", "--task", "mqar(pairs=4, eval_size=16)", "--steps", "2",
        "--batch", "4", "--no-progress"]


def test_the_options_parse_with_their_defaults():
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    args = parser.parse_args(["gpt_tiny", "--out", "runs/x"])
    assert (args.task, args.steps, args.batch, args.strategy, args.precision) == ("copy", 1000, 64, "ddp", "fp32")
    assert (args.grad_accum, args.checkpoint_every, args.resume, args.compile) == (1, 0, False, False)
    args = parser.parse_args(["gpt_tiny", "-o", "d", "--strategy", "fsdp", "--precision", "bf16",
                              "--grad-accum", "2", "--checkpoint-every", "5", "--resume", "--seed", "3"])
    assert (args.strategy, args.precision, args.grad_accum, args.checkpoint_every, args.resume,
            args.seed) == ("fsdp", "bf16", 2, 5, True, 3)


def test_a_run_prints_its_result(tmp_path, capsys):
    assert main([*ARGS, "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "steps 0->2" in out and "eval length 4: accuracy" in out
    assert f"model: {tmp_path / 'model.safetensors'}" in out


def test_a_mistake_is_one_line_and_exit_status_2(tmp_path, capsys):
    assert main([*ARGS, "--out", str(tmp_path), "--batch", "3", "--grad-accum", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["plugformer: error: --batch 3 (the global batch: examples per optimiser step) does "
                   "not split evenly into 1 rank(s) x 2 micro-batch(es) (--grad-accum); use a "
                   "multiple of 2, e.g. 2"]


def test_an_unwritable_out_is_a_mistake_too(tmp_path, capsys):
    blocked = tmp_path / "file"
    blocked.write_text("")
    assert main([*ARGS, "--out", str(blocked)]) == 2
    assert "cannot write to --out" in capsys.readouterr().err
