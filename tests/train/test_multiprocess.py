"""Two processes on CPU (gloo) under torchrun: DDP and FSDP2 follow the one-process curve,
a killed run resumes exactly, the final file loads in one process, failures stop every rank.

Each launch is ``python -m torch.distributed.run --standalone`` (a free port of its own) with
one thread per process; the one-process references run in this process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import plugformer
from plugformer.compare import make_task
from plugformer.train import evaluate, train
from plugformer.train.loop import STOP_AFTER_ENV, STOPPED_EXIT_CODE

from .launch_helpers import FAILURE_MESSAGE, RaggedTask

if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
    pytest.skip("needs torch.distributed with gloo", allow_module_level=True)

HELPER = Path(__file__).with_name("launch_helpers.py")
LAUNCH_TIMEOUT_S = 300
LM, LM_TASK = "gpt_tiny(layers=2)", "mqar(pairs=4, eval_size=64)"
COMMON = ["--steps", "6", "--batch", "8", "--lr", "1e-2", "--no-progress"]


def torchrun(target: list[str], args: list[str], *, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``target`` (``-m module`` or a script) on 2 processes; a hang fails the test."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               *target, *args]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(command, capture_output=True, text=True, env=environment,
                          timeout=LAUNCH_TIMEOUT_S)


def train_cli(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    return torchrun(["-m", "plugformer.train"], args, **kwargs)


def helper_cli(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    return torchrun([str(HELPER)], args, **kwargs)


def losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def one_process(spec: str, task, tmp: Path, **kwargs) -> list[float]:
    settings = dict(steps=6, batch=8, lr=1e-2, progress=False, evaluate_at_end=False)
    return train(spec, task=task, out=tmp, **{**settings, **kwargs}).losses


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory):
    """gpt_tiny (tied embeddings) on mqar, 2 ranks x 2 micro-batches, FSDP2, checkpoints at
    steps 3 and 6."""
    out = tmp_path_factory.mktemp("fsdp")
    done = train_cli([LM, "--task", LM_TASK, *COMMON, "--strategy", "fsdp", "--grad-accum", "2",
                      "--checkpoint-every", "3", "--out", str(out)])
    assert done.returncode == 0, done.stderr
    return out, done


def test_fsdp_follows_the_one_process_curve(fsdp_run, tmp_path):
    out, _ = fsdp_run
    expected = one_process(LM, LM_TASK, tmp_path)
    assert losses(out) == pytest.approx(expected, abs=1e-5)


def test_fsdp_final_file_loads_in_one_process_and_scores_the_same(fsdp_run):
    out, _ = fsdp_run
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["world"], summary["strategy"]) == (2, "fsdp")
    model = plugformer.load(out / "model.safetensors")
    assert model.lm_head.weight is model.embed.weight  # still tied
    (score,) = evaluate(model, make_task(LM_TASK))
    (reported,) = summary["evals"]
    assert score.accuracy == reported["accuracy"] and score.exact_match == reported["exact_match"]
    assert score.loss == pytest.approx(reported["loss"], abs=1e-5)


def test_only_rank_0_speaks_and_small_models_get_an_fsdp_warning(fsdp_run):
    _, done = fsdp_run
    assert done.stderr.count("too small to shard usefully") == 1
    assert done.stderr.count("training gpt_tiny") == 1
    assert done.stdout.count("model: ") == 1


@pytest.mark.slow
def test_ddp_with_accumulation_follows_the_one_process_curve(tmp_path):
    done = helper_cli(["gpt_tiny(layers=2)", "--task", "ragged", *COMMON, "--grad-accum", "2",
                       "--schedule", "constant", "--no-eval", "--out", str(tmp_path / "ddp")])
    assert done.returncode == 0, done.stderr
    expected = one_process("gpt_tiny(layers=2)", RaggedTask(length=8, eval_size=64), tmp_path / "one",
                           schedule="constant")
    assert losses(tmp_path / "ddp") == pytest.approx(expected, abs=1e-5)


@pytest.mark.slow
def test_a_killed_fsdp_run_resumes_as_if_never_stopped(tmp_path):
    spec, task = "transformer_tiny(layers=1)", "copy(length=6, vocab=16, eval_size=64)"
    args = [spec, "--task", task, *COMMON, "--strategy", "fsdp", "--checkpoint-every", "3",
            "--no-eval", "--out", str(tmp_path / "run")]
    killed = train_cli(args, env={STOP_AFTER_ENV: "4"})
    assert killed.returncode != 0
    assert f"exitcode  : {STOPPED_EXIT_CODE}" in killed.stderr
    assert len(losses(tmp_path / "run")) == 4  # step 4 ran, its checkpoint never came
    shutil.copytree(tmp_path / "run", tmp_path / "alone")

    resumed = train_cli([*args, "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stderr and "(step 3)" in resumed.stderr
    expected = one_process(spec, task, tmp_path / "one")
    assert losses(tmp_path / "run") == pytest.approx(expected, abs=1e-5)

    # the sharded checkpoint also resumes in one process (DCP reshards it)
    alone = one_process(spec, task, tmp_path / "alone", resume=True, checkpoint_every=3)
    assert alone == pytest.approx(expected[3:], abs=1e-5)


@pytest.mark.slow
def test_a_failure_on_one_rank_stops_both_with_that_ranks_message(tmp_path):
    done = helper_cli(["gpt_tiny(layers=1, ffn=failing(fail_at=2))", "--task", LM_TASK, *COMMON,
                       "--out", str(tmp_path)], env={"FAIL_RANK": "1"})
    assert done.returncode != 0
    assert f"plugformer: error (rank 1 of 2): RuntimeError: {FAILURE_MESSAGE}" in done.stderr
    assert "error (rank 0" not in done.stderr
    assert len(losses(tmp_path)) == 1  # rank 1 failed in step 2


@pytest.mark.slow
def test_a_batch_the_ranks_cannot_split_is_reported_once(tmp_path):
    done = train_cli([LM, "--task", LM_TASK, "--steps", "2", "--batch", "3", "--out", str(tmp_path)])
    assert done.returncode != 0
    message = "plugformer: error: --batch 3 (the global batch: examples per optimiser step) does not " \
              "split evenly into 2 rank(s) x 1 micro-batch(es)"
    assert done.stderr.count(message) == 1, done.stderr
