"""The FLOPs ``compare`` counts for bi-level routing attention against a hand count of what its
routing computes: QK^T and PV over the chosen regions' keys (2 FLOPs a multiply-add), the
routing's gate, and a backward twice the forward's products, as ``FlopCounterMode`` counts
SDPA. Long inputs (the tiles and grouped paths), the kernel's default thresholds."""

from __future__ import annotations

import pytest
import torch

from plugformer.compare.flops import count_flops
from plugformer.plugins.bra import BiLevelRoutingAttention

H, DH, REGION, TOPK, LENGTH = 2, 16, 64, 4, 2048


def hand_count(causal: bool) -> tuple[int, int]:
    """(attention FLOPs of the forward, routing FLOPs) for one (1, H, LENGTH, DH) call."""
    regions = LENGTH // REGION
    if causal:  # query i attends its own region whole and up to TOPK - 1 earlier ones
        keys = sum(min(TOPK, i // REGION + 1) * REGION for i in range(LENGTH))
        gate = 2 * LENGTH * H * DH * regions  # every token's q against every region's mean key
    else:  # every query region attends TOPK regions
        keys = LENGTH * TOPK * REGION
        gate = 2 * regions * H * DH * regions
    return 2 * 2 * keys * DH * H, gate


@pytest.mark.parametrize("causal", [False, True])
def test_counted_flops_are_what_the_routing_computes(causal):
    torch.manual_seed(0)
    kernel = BiLevelRoutingAttention(heads=H, head_dim=DH, region=REGION, topk=TOPK)
    q, k, v = (torch.randn(1, H, LENGTH, DH, requires_grad=True) for _ in range(3))
    attention, gate = hand_count(causal)
    forward = count_flops(kernel, lambda m: m(q, k, v, causal=causal))
    both = count_flops(kernel, lambda m: m(q, k, v, causal=causal), backward=True)
    assert forward == pytest.approx(attention + gate, rel=0.1)
    assert both == pytest.approx(3 * attention + gate, rel=0.1)
    dense = 2 * 2 * LENGTH * LENGTH * DH * H  # what FlopCounterMode counts for SDPA, causal or not
    assert forward < dense / 4
