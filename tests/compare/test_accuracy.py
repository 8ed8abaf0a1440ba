"""What the built-in tasks let small models learn (slow: minutes on two CPU cores).

The numbers these assert are ANCHORS.md's, reached through our own stack: transformer_tiny
learns copy within the demo's budget; gpt_tiny learns MQAR (8 pairs, 64 keys and values) in
the language-model form.
"""

from __future__ import annotations

import pytest
import torch

from plugformer.compare import compare
from plugformer.compare.cli import DEMO

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


@pytest.mark.xfail(
    reason="open (issue 4): gpt_tiny reached 17% answer accuracy on 8-pair MQAR after 1,500 steps "
    "in a clean-clone run (2026-11-28); the anchor reaches 100% with a 2-layer pre-LN model",
    strict=False,
)
def test_gpt_tiny_learns_mqar_in_lm_form():
    result = compare("gpt_tiny(attn=dense)", "mqar(pairs=8, keys=64, values=64)", steps=1500,
                     batch=64, lr=1e-3, timing_repeats=1)
    (row,) = result.rows
    assert row.ok, row.error
    assert row.evals[0].accuracy >= 0.90
