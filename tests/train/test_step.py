"""The training step shared by `compare` and `train` (plugformer/train/step.py).

References: ``torch.optim.lr_scheduler.OneCycleLR`` and the ``LambdaLR`` cosine that `compare`
used before the step was shared; a plain loop (mean cross-entropy over the scored tokens, one
backward, clip, SGD) for the update, whatever the accumulation.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import plugformer
from plugformer.tasks.base import IGNORE_INDEX
from plugformer.train.data import BatchPlan
from plugformer.train.distributed import find_blocks
from plugformer.train.step import (NonFinite, compile_blocks, loss_sums, lr_at, optimizer_step,
                                   schedule_at, set_schedule)

from .launch_helpers import RaggedTask

LM = "gpt_tiny(layers=2)"


def _model(task, seed=0):
    torch.manual_seed(seed)
    return plugformer.build(LM, vocab=task.vocab_size, max_len=task.max_len)


def test_cosine_schedule_warms_up_then_decays_to_zero():
    lr, steps = 1.0, 100  # warm-up: 5 steps
    assert lr_at(0, steps, lr, "cosine") == pytest.approx(0.2 * 0.5 * (1 + math.cos(0)))
    assert lr_at(4, steps, lr, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.04)))
    assert lr_at(50, steps, lr, "cosine") == pytest.approx(0.5)
    assert lr_at(100, steps, lr, "cosine") == pytest.approx(0.0, abs=1e-12)
    assert lr_at(37, steps, 0.3, "constant") == 0.3


@pytest.mark.parametrize("steps", [1, 2, 7, 300])
def test_onecycle_is_torchs_onecyclelr_lr_and_beta1(steps):
    lr = 3e-3
    optimizer = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=lr)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    for step in range(steps):
        rate, beta1 = schedule_at(step, steps, lr, "onecycle")
        group = optimizer.param_groups[0]
        assert rate == pytest.approx(group["lr"], rel=1e-12, abs=1e-18)
        assert beta1 == pytest.approx(group["betas"][0], rel=1e-12)
        optimizer.step()
        scheduler.step()


def test_cosine_is_the_lambdalr_compare_used_before():
    lr, steps = 5e-3, 60
    warmup = max(1, steps // 20)
    optimizer = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    for step in range(steps):
        assert lr_at(step, steps, lr, "cosine") == optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()


def test_set_schedule_sets_beta1_only_for_onecycle():
    optimizer = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=1.0, betas=(0.9, 0.99))
    assert set_schedule(optimizer, 3, 10, 1.0, "constant") == 1.0
    assert optimizer.param_groups[0]["betas"] == (0.9, 0.99)
    rate = set_schedule(optimizer, 0, 10, 1.0, "onecycle")
    assert rate == pytest.approx(1.0 / 25) and optimizer.param_groups[0]["lr"] == rate
    assert optimizer.param_groups[0]["betas"] == pytest.approx((0.95, 0.99))
    with pytest.raises(ValueError, match="schedule must be one of onecycle, cosine, constant, got 'linear'"):
        lr_at(0, 10, 1.0, "linear")


@pytest.mark.parametrize("accum", [1, 2, 4])
def test_accumulated_micro_batches_make_the_update_of_one_batch(accum):
    task = RaggedTask(length=8)
    batch = task.batch(0, 8, kind="lm", seed=0)
    reference = _model(task)
    model = copy.deepcopy(reference)
    # SGD: the update is the clipped gradient itself (Adam's first step, g / |g|, would turn
    # float noise in a near-zero gradient into a full-size step of either sign)
    expected_opt = torch.optim.SGD(reference.parameters(), lr=1.0)
    logits = batch.logits(reference)
    loss = F.cross_entropy(logits.flatten(0, 1), batch.targets.flatten(), ignore_index=IGNORE_INDEX)
    loss.backward()
    expected_norm = float(nn.utils.clip_grad_norm_(reference.parameters(), 1.0))
    expected_opt.step()

    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    done = optimizer_step(model, optimizer, batch, BatchPlan(8, 1, accum), clip=1.0)
    assert done.loss == pytest.approx(loss.item(), abs=1e-5)
    assert done.grad_norm == pytest.approx(expected_norm, rel=1e-4)
    for (name, got), want in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5, msg=name)
    assert all(p.grad is None for p in model.parameters())


def test_the_aux_loss_is_added_and_backpropagated():
    task = RaggedTask(length=8)
    batch = task.batch(0, 4, kind="lm", seed=0)
    model = _model(task)
    model.aux_loss = lambda: 2.5 * model.lm_head.weight.sum()
    token_loss, aux = loss_sums(model, batch)
    assert aux.item() == pytest.approx(2.5 * model.lm_head.weight.sum().item(), rel=1e-5)
    plain = F.cross_entropy(batch.logits(model).flatten(0, 1), batch.targets.flatten(),
                            ignore_index=IGNORE_INDEX, reduction="sum")
    assert token_loss.item() == pytest.approx(plain.item(), rel=1e-5)
    (token_loss + aux).backward()
    assert model.lm_head.weight.grad is not None


def test_bf16_runs_the_forward_under_autocast():
    task = RaggedTask(length=8)
    batch = task.batch(0, 4, kind="lm", seed=0)
    model = _model(task)
    seen: list[torch.dtype] = []
    for module in model.modules():
        if isinstance(module, nn.Linear):
            module.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    token_loss, _ = loss_sums(model, batch, "fp32")
    assert seen and set(seen) == {torch.float32}
    seen.clear()
    bf16_loss, aux = loss_sums(model, batch, "bf16")
    assert seen and set(seen) == {torch.bfloat16}
    assert bf16_loss.dtype == aux.dtype == torch.float32
    assert bf16_loss.item() == pytest.approx(token_loss.item(), rel=0.05)


def test_a_non_finite_loss_raises_before_the_optimiser_steps():
    task = RaggedTask(length=8)
    model = _model(task)
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    with pytest.raises(NonFinite, match="non-finite loss") as caught:
        optimizer_step(model, optimizer, task.batch(0, 4, kind="lm"), BatchPlan(4))
    assert caught.value.what == "loss" and math.isnan(caught.value.value)
    for got, want in zip(model.parameters(), before):
        assert torch.equal(got.nan_to_num(), want.nan_to_num())


def test_compile_blocks_compiles_every_block_in_place():
    task = RaggedTask(length=8)
    model = _model(task)
    names = [name for name, _ in model.named_parameters()]
    assert compile_blocks(model) == 2
    assert all(block._compiled_call_impl is not None for block in find_blocks(model))
    assert [name for name, _ in model.named_parameters()] == names
