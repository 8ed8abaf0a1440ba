"""What the built-in tasks let small models learn (slow: about a minute each on two CPU cores).

transformer_tiny learns copy within the demo's budget. MQAR (8 pairs, 64 keys and values) in the
language-model form is learnable in 1,500 steps: a plain ``nn.TransformerEncoder`` (2 pre-LN
causal layers, d_model 64), trained on the very batches `compare` uses, reaches 100% answer
accuracy (ANCHORS.md measured the same), and so does gpt_tiny. BRA learns copy as well as fused
attention does.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from plugformer.compare import compare
from plugformer.compare.cli import DEMO
from plugformer.tasks import IGNORE_INDEX, batch_metrics
from plugformer.tasks.synthetic import mqar

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _two_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(min(2, threads))
    yield
    torch.set_num_threads(threads)


def test_transformer_tiny_learns_copy_within_the_demo_budget():
    result = compare("transformer_tiny", DEMO["task"], steps=DEMO["steps"], batch=DEMO["batch"],
                     lr=DEMO["lr"], timing_repeats=1)
    (row,) = result.rows
    assert row.ok, row.error
    assert row.evals[0].exact_match >= 0.99


def test_bra_trains_to_the_accuracy_of_fused_attention():
    # Half of the source and of the decoder's past in reach (4-token regions, top-2 of 4): BRA
    # really attends to less than fused attention, and still has to find the token to copy.
    result = compare("transformer_tiny(attn={fused, bra(region=4, topk=2)})", DEMO["task"],
                     steps=DEMO["steps"], batch=DEMO["batch"], lr=DEMO["lr"], timing_repeats=1)
    fused, bra = result.rows
    assert fused.ok and bra.ok, (fused.error, bra.error)
    assert fused.evals[0].exact_match >= 0.95
    assert bra.evals[0].exact_match >= fused.evals[0].exact_match - 0.05
    assert bra.evals[0].accuracy >= fused.evals[0].accuracy - 0.02


class _ReferenceLM(nn.Module):
    """2-layer pre-LN causal transformer from torch.nn alone: the independent check of the task."""

    def __init__(self, vocab: int, max_len: int, d_model: int = 64) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.positions = nn.Embedding(max_len, d_model)
        nn.init.normal_(self.positions.weight, std=0.02)
        layer = nn.TransformerEncoderLayer(d_model, 4, 256, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.layers = nn.TransformerEncoder(layer, 2, norm=nn.LayerNorm(d_model),
                                            enable_nested_tensor=False)
        self.head = nn.Linear(d_model, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        length = ids.shape[1]
        x = self.embed(ids) + self.positions(torch.arange(length))
        mask = nn.Transformer.generate_square_subsequent_mask(length)
        return self.head(self.layers(x, mask=mask, is_causal=True))


def test_mqar_lm_form_is_learnable_by_a_reference_transformer():
    task = mqar(pairs=8, keys=64, values=64)
    torch.manual_seed(0)
    model = _ReferenceLM(task.vocab_size, task.max_len)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-3, total_steps=1500)
    for step in range(1500):
        batch = task.batch(step, 64, kind="lm")
        loss = F.cross_entropy(model(batch.ids).flatten(0, 1), batch.targets.flatten(),
                               ignore_index=IGNORE_INDEX)
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
    model.eval()
    with torch.no_grad():
        totals = [batch_metrics(model(b.ids), b.targets) for b in task.eval_batches(8, "lm")]
    assert sum(t["correct"] for t in totals) / sum(t["tokens"] for t in totals) >= 0.90


def test_gpt_tiny_learns_mqar_in_lm_form():
    result = compare("gpt_tiny(attn=dense)", "mqar(pairs=8, keys=64, values=64)", steps=1500,
                     batch=64, lr=1e-3, timing_repeats=1)
    (row,) = result.rows
    assert row.ok, row.error
    assert row.evals[0].accuracy >= 0.90
