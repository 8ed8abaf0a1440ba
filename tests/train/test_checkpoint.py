"""Checkpoints in one process: resuming continues the run exactly; other runs are refused.

Multi-process checkpoints (sharded under FSDP, killed and resumed) are in test_multiprocess.py.
"""

from __future__ import annotations

import json
import shutil

import pytest

import plugformer
from plugformer.train import ResumeError, train
from plugformer.train.checkpoint import STATE_FILE, checkpoint_path, latest, read_state

LM = "gpt_tiny(layers=2)"
RUN = dict(task="mqar(pairs=4, eval_size=16)", steps=6, batch=8, lr=1e-2, checkpoint_every=3,
           evaluate_at_end=False, progress=False)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """An uninterrupted 6-step run with checkpoints at steps 3 and 6."""
    out = tmp_path_factory.mktemp("finished")
    return out, train(LM, out=out, **RUN)


def test_checkpoints_are_written_every_k_steps_with_their_state(finished):
    out, result = finished
    assert latest(out) == checkpoint_path(out, 6)
    state = read_state(checkpoint_path(out, 3))
    assert (state.step, state.batch, state.seed, state.steps) == (3, 8, 0, 6)
    assert state.spec == str(plugformer.load(result.model_path).spec)


def test_resuming_from_a_checkpoint_continues_the_run_exactly(finished, tmp_path):
    out, result = finished
    shutil.copytree(out, tmp_path, dirs_exist_ok=True)
    shutil.rmtree(checkpoint_path(tmp_path, 6))
    resumed = train(LM, out=tmp_path, resume=True, **RUN)
    assert resumed.start_step == 3
    assert resumed.losses == pytest.approx(result.losses[3:], abs=1e-6)
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_a_checkpoint_being_written_is_not_resumed_from(finished, tmp_path):
    out, _ = finished
    shutil.copytree(out, tmp_path, dirs_exist_ok=True)
    (checkpoint_path(tmp_path, 6) / STATE_FILE).unlink()  # as if killed while saving step 6
    assert latest(tmp_path) == checkpoint_path(tmp_path, 3)


def test_resuming_a_finished_run_only_exports_it_again(finished, tmp_path):
    out, _ = finished
    shutil.copytree(out, tmp_path, dirs_exist_ok=True)
    again = train(LM, out=tmp_path, resume=True, **RUN)
    assert (again.start_step, again.losses) == (6, [])
    assert plugformer.load(again.model_path) is not None


def test_a_checkpoint_of_another_spec_is_refused_naming_both(finished):
    out, result = finished
    saved = read_state(latest(out)).spec
    with pytest.raises(ResumeError) as err:
        train("gpt_tiny(layers=1)", out=out, resume=True, **RUN)
    message = str(err.value)
    assert f"checkpoint: {saved}" in message
    assert "this run:   gpt_tiny(d_model=64, heads=4, kv_heads=none, layers=1," in message


@pytest.mark.parametrize("change, message", [
    (dict(batch=4), "it was trained with batch 8, this run asks for batch 4"),
    (dict(seed=1), "it was trained with seed 0, this run asks for seed 1"),
    (dict(task="mqar(pairs=5, eval_size=16)"), "task mqar(pairs=4, keys=64, values=64), this run "
                                               "asks for task mqar(pairs=5"),
])
def test_a_checkpoint_of_other_data_is_refused(finished, change, message):
    out, _ = finished
    with pytest.raises(ResumeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        train(LM, out=out, resume=True, **{**RUN, **change})


def test_existing_checkpoints_are_not_overwritten_without_resume(finished):
    out, _ = finished
    with pytest.raises(ValueError, match="already holds checkpoints .*step_00000006.*--resume"):
        train(LM, out=out, **RUN)


def test_resume_without_a_checkpoint_starts_from_scratch(tmp_path):
    result = train(LM, out=tmp_path, resume=True, **{**RUN, "steps": 1, "checkpoint_every": 0})
    assert result.start_step == 0 and len(result.losses) == 1
