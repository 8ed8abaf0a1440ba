"""FLOPs of a forward (and backward) pass, counted by ``torch.utils.flop_counter``.

``FlopCounterMode`` counts the matrix products that reach the dispatcher. On CPU,
``F.scaled_dot_product_attention`` reaches it as ``aten._scaled_dot_product_flash_attention_for_cpu``
(and its ``_backward``), for which torch has no formula, so the fused kernel would count zero
attention FLOPs while the written-out kernel counts its two matmuls. Importing this module
registers formulas for those ops through torch's own extension point (``register_flop_formula``),
with torch's own SDPA counts: ``dense`` and ``fused`` then report the same FLOPs.

Like torch's counter, these count multiply-adds of matrix products as 2 FLOPs and nothing else
(softmax, norms and elementwise work are free), and count a causal or masked attention as if it
were full.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_flops"]

_aten = torch.ops.aten


def _cpu_flash_forward_flop(query_shape, key_shape, value_shape, *args, out_shape=None,
                            **kwargs) -> int:
    """Forward FLOPs of ``_scaled_dot_product_flash_attention_for_cpu``: QK^T and PV."""
    return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_flash_backward_flop(grad_out_shape, query_shape, key_shape, value_shape, *args,
                             out_shape=None, **kwargs) -> int:
    """Backward FLOPs of ``_scaled_dot_product_flash_attention_for_cpu_backward``.

    The four products of the attention backward (dP = dO V^T, dV = P^T dO, dQ = dS K,
    dK = dS^T Q), twice the forward's: what written-out attention's backward counts. The kernel
    also recomputes Q K^T from the saved log-sum-exp; that is a choice of the kernel, not work
    the model asks for, so it is left out and ``dense`` and ``fused`` agree forward and backward.
    """
    return 2 * flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


def _register(op_name: str, formula: Callable[..., int]) -> None:
    """Register ``formula`` for ``aten.<op_name>`` unless torch (or someone) already has one."""
    op = getattr(_aten, op_name, None)
    if op is None or op in flop_counter.flop_registry:
        return
    flop_counter.register_flop_formula(op)(formula)


_register("_scaled_dot_product_flash_attention_for_cpu", _cpu_flash_forward_flop)
_register("_scaled_dot_product_flash_attention_for_cpu_backward", _cpu_flash_backward_flop)


def count_flops(model: nn.Module, run: Callable[[nn.Module], torch.Tensor], *,
                backward: bool = False) -> int:
    """FLOPs of ``run(model)`` (a forward pass returning a tensor), plus its backward if asked.

    The model is left as it was: gradients produced by the backward pass are discarded.
    """
    with FlopCounterMode(display=False) as counter:
        if backward:
            run(model).float().sum().backward()
        else:
            with torch.no_grad():
                run(model)
    if backward:
        model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())
