"""`plugformer.train.train` in one process: the loss it optimises, its outputs, its errors.

The reference for the loss is a plain loop written here: one batch per step, mean cross-entropy
over the scored tokens, AdamW, gradient clipping. `train` with gradient accumulation must follow
it exactly, which holds only if micro-batches are weighted by their share of scored tokens.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

import plugformer
from plugformer.registry.registry import Registry
from plugformer.tasks.base import IGNORE_INDEX
from plugformer.train import TrainError, evaluate, train
from plugformer.train.step import lr_at

from .launch_helpers import RaggedTask

LM = "gpt_tiny(layers=2)"
QUIET = dict(progress=False)


def reference_losses(spec, task, *, steps, batch, lr, seed=0, clip=1.0, weight_decay=0.01):
    torch.manual_seed(seed)
    model = plugformer.build(spec, vocab=task.vocab_size, max_len=task.max_len)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    losses = []
    for step in range(steps):
        data = task.batch(step, batch, kind=model.kind, seed=seed)
        logits = data.logits(model)
        loss = F.cross_entropy(logits.flatten(0, 1), data.targets.flatten(), ignore_index=IGNORE_INDEX)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        losses.append(loss.item())
    return losses


def test_the_ragged_task_really_scores_rows_unequally():
    targets = RaggedTask(length=8).batch(0, 8, kind="lm", seed=0).targets
    assert len(set((targets != IGNORE_INDEX).sum(1).tolist())) > 2


@pytest.mark.parametrize("grad_accum", [1, 4])
def test_training_follows_one_big_batch_whatever_the_accumulation(tmp_path, grad_accum):
    task = RaggedTask(length=8, eval_size=16)
    expected = reference_losses(LM, task, steps=4, batch=8, lr=1e-2)
    result = train(LM, task=task, steps=4, batch=8, lr=1e-2, schedule="constant",
                   grad_accum=grad_accum, out=tmp_path, evaluate_at_end=False, **QUIET)
    assert result.losses == pytest.approx(expected, abs=1e-5)
    assert expected[-1] < expected[0]


def test_a_run_writes_metrics_plot_summary_and_a_model_that_loads(tmp_path):
    result = train(LM, task="mqar(pairs=4, eval_size=64)", steps=5, batch=8, out=tmp_path, **QUIET)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5]
    assert [r["loss"] for r in records] == result.losses
    assert all({"loss", "lr", "tokens_per_s", "grad_norm"} <= set(r) for r in records)
    assert records[0]["lr"] == pytest.approx(lr_at(0, 5, 3e-3, "cosine"))
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["final_loss"] == result.losses[-1] and summary["world"] == 1
    pytest.importorskip("matplotlib")
    assert (tmp_path / "loss.png").stat().st_size > 0

    model = plugformer.load(result.model_path)
    task = plugformer.compare.make_task("mqar(pairs=4, eval_size=64)")
    assert evaluate(model, task) == result.evals
    assert [e.length for e in result.evals] == [4]


def test_bf16_autocast_trains_close_to_fp32(tmp_path):
    common = dict(task="mqar(pairs=4, eval_size=16)", steps=3, batch=8, evaluate_at_end=False, **QUIET)
    fp32 = train(LM, out=tmp_path / "fp32", **common)
    bf16 = train(LM, out=tmp_path / "bf16", precision="bf16", **common)
    assert bf16.losses == pytest.approx(fp32.losses, abs=0.05)
    assert bf16.losses != fp32.losses  # autocast really ran in bf16


@pytest.mark.parametrize("kwargs, message", [
    (dict(steps=0), "--steps must be >= 1, got 0"),
    (dict(lr=0.0), "--lr must be > 0, got 0.0"),
    (dict(precision="fp16"), "--precision must be one of fp32, bf16, got 'fp16'"),
    (dict(strategy="zero"), "--strategy must be one of ddp, fsdp, got 'zero'"),
    (dict(schedule="linear"), "--schedule must be one of cosine, constant, got 'linear'"),
    (dict(checkpoint_every=-1), "--checkpoint-every must be >= 0, got -1"),
    (dict(batch=8, grad_accum=3), r"--batch 8 .* 1 rank\(s\) x 3 micro-batch\(es\)"),
    (dict(task="copy"), "task 'copy' serves encdec models, and 'gpt_tiny' is an 'lm' model"),
    (dict(task="cpoy"), "unknown task 'cpoy'"),
])
def test_bad_arguments_are_refused_before_training(tmp_path, kwargs, message):
    settings = dict(task="mqar(pairs=4)", steps=2, batch=4, **QUIET)
    with pytest.raises(ValueError, match=message):
        train(LM, out=tmp_path / "run", **{**settings, **kwargs})
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_an_unwritable_out_is_refused(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(ValueError, match=f"cannot write to --out '{blocker / 'run'}'"):
        train(LM, task="mqar(pairs=4)", steps=1, batch=4, out=blocker / "run", **QUIET)


def test_a_non_finite_loss_stops_the_run(tmp_path):
    from plugformer.core.interfaces import AttentionKernel

    class NaNAttention(AttentionKernel):
        def forward(self, q, k, v, *, mask=None, causal=False, score_bias=None):
            return torch.full_like(q, math.nan)

    registry = Registry(autoload=True)
    registry.add("attention", "nan_kernel", lambda ctx: NaNAttention())
    with pytest.raises(TrainError, match=r"non-finite loss \(nan\) at step 1"):
        train("gpt_tiny(layers=1, attn=nan_kernel)", task="mqar(pairs=4)", steps=2, batch=4,
              out=tmp_path, registry=registry, **QUIET)
