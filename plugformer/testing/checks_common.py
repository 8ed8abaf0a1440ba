"""Checks of a positional encoding, feed-forward network, norm or block alone.

Feed-forward networks, norms and blocks map (B, L, D) -> (B, L, D). A positional encoding is
probed through all three of its hooks at once (:class:`PositionalProbe`): ``embed`` on
(B, L, D), ``rotate`` on q (B, H, L, Dh) and k, and ``score_bias`` on the (L, L) grid. A block
is taken from the first layer of the kit's ``gpt_tiny`` (block factories need their parts wired).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from plugformer.testing.checks_attention import parameter_dtypes
from plugformer.testing.result import CheckResult, failed, not_applicable, passed
from plugformer.testing.subject import D_MODEL, HEADS, Subject, first_line, gradient_result, jacobian_gap, max_difference

ATOL = 1e-5


class PositionalProbe(nn.Module):
    """Runs every hook of a positional encoding: (x, q, k) -> (embed, rotated q, rotated k, score bias (H, L, L))."""

    def __init__(self, encoding: nn.Module) -> None:
        super().__init__()
        self.encoding = encoding

    def forward(self, x: Tensor, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        pos = torch.arange(x.shape[1], device=x.device)
        embedded = self.encoding.embed(x, pos)
        q, k = self.encoding.rotate(q, k, pos, pos)
        bias = self.encoding.score_bias(pos[:, None], pos[None, :])
        if bias is None:
            bias = torch.zeros((), dtype=x.dtype, device=x.device)
        return embedded, q, k, bias


def part_module(s: Subject, *, dtype: torch.dtype = torch.float32, small: bool = False, seed: int = 0) -> nn.Module:
    """The part as a module the checks can call, weights from ``seed``; ``small`` builds it at d_model 8, 2 heads."""
    sizes = {"d_model": 8, "heads": 2} if small else {}
    if s.kind == "block":
        model = s.model(dtype=dtype, seed=seed, **sizes)
        return model.decoder.layers[0]
    module = s.build(dtype=dtype, seed=seed, **sizes)
    return PositionalProbe(module) if s.kind == "positional" else module


def inputs(s: Subject, *, dtype: torch.dtype = torch.float32, batch: int = 2, length: int = 12,
           d_model: int = D_MODEL, heads: int = HEADS, grad: bool = False) -> tuple[Tensor, ...]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, length, d_model, generator=gen).to(dtype).requires_grad_(grad)
    if s.kind != "positional":
        return (x,)
    q = torch.randn(batch, heads, length, d_model // heads, generator=gen).to(dtype).requires_grad_(grad)
    k = torch.randn(batch, heads, length, d_model // heads, generator=gen).to(dtype).requires_grad_(grad)
    return x, q, k


def call(s: Subject, module: nn.Module, args: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    out = module(*args, causal=True) if s.kind == "block" else module(*args)
    return out if isinstance(out, tuple) else (out,)


def shapes_dtypes(s: Subject) -> CheckResult:
    name = "shapes_dtypes"
    labels = ("embed", "rotate q", "rotate k") if s.kind == "positional" else ("output",)
    for dtype in (torch.float32, torch.bfloat16):
        module = part_module(s, dtype=dtype)
        args = inputs(s, dtype=dtype)
        with torch.no_grad():
            outs = call(s, module, args)
        for label, arg, out in zip(labels, args, outs):
            if tuple(out.shape) != tuple(arg.shape):
                return failed(name, f"{dtype}: {label} has shape {tuple(out.shape)}, expected {tuple(arg.shape)}")
            if out.dtype != dtype:
                return failed(name, f"{dtype} in: {label} comes out {out.dtype}")
            if not torch.isfinite(out).all():
                return failed(name, f"{dtype}: {label} holds {int((~torch.isfinite(out)).sum())} NaN/Inf")
        if s.kind == "positional" and s.capability("uses_bias") and not torch.isfinite(outs[-1]).all():
            return failed(name, f"{dtype}: the score bias holds NaN/Inf")
    wrong = parameter_dtypes(part_module(s, dtype=torch.float64), torch.float64)
    if wrong:
        return failed(name, f"built with dtype=torch.float64, {wrong}")
    if s.kind == "positional" and s.capability("uses_bias"):
        encoding = s.build()
        for q_pos, k_pos in _index_shapes():
            want = (HEADS, *torch.broadcast_shapes(q_pos.shape, k_pos.shape))
            got = tuple(encoding.score_bias(q_pos, k_pos).shape)
            if got != want:
                return failed(name, f"score_bias(q_pos {tuple(q_pos.shape)}, k_pos {tuple(k_pos.shape)}) has shape {got}, expected (H, *broadcast shape) = {want}")
    return passed(name, "shapes kept, float32 and bfloat16 in give the same dtype out"
                  + ("; score_bias is (H, *broadcast shape) for grid, flat and 3-D indices" if s.capability("uses_bias") else ""))


def _index_shapes() -> list[tuple[Tensor, Tensor]]:
    """Position tensors as kernels pass them: the (Lq, 1) x (1, Lk) grid, matched flat lists, gathered 3-D blocks."""
    return [
        (torch.arange(5)[:, None], torch.arange(7)[None, :]),
        (torch.arange(6), torch.arange(6).flip(0)),
        (torch.arange(6).view(2, 3, 1), torch.arange(8).view(2, 1, 4)),
    ]


def masked_rows_finite(s: Subject) -> CheckResult:
    if s.kind != "block":
        return not_applicable("masked_rows_finite", f"a {s.kind} takes no attention mask (padding is checked with the model)")
    block = part_module(s)
    (x,) = inputs(s, grad=True)
    mask = torch.ones(2, 1, x.shape[1], x.shape[1], dtype=torch.bool)
    mask[1] = False
    out = block(x, self_mask=mask, causal=True)
    if not torch.isfinite(out).all():
        return failed("masked_rows_finite", "a row with every key masked gives NaN/Inf")
    (grad,) = torch.autograd.grad(out.sum(), (x,))
    if not torch.isfinite(grad).all():
        return failed("masked_rows_finite", "a row with every key masked gives NaN/Inf gradients")
    return passed("masked_rows_finite", "a fully masked row stays finite, forward and backward")


def gradients_reach_parameters(s: Subject) -> CheckResult:
    name = "gradients_reach_parameters"
    module = part_module(s)
    params = dict(module.named_parameters())
    if not params:
        return not_applicable(name, f"the {s.kind} has no parameters")
    args = inputs(s, batch=4, length=32, grad=True)  # 128 tokens: enough to reach every expert of a MoE
    sum(out.float().square().sum() for out in call(s, module, args) if out.requires_grad).backward()
    missing = [i for i, arg in enumerate(args) if arg.grad is None or not torch.isfinite(arg.grad).all()]
    if missing:
        return failed(name, f"input {missing[0]} gets {'no' if args[missing[0]].grad is None else 'a NaN/Inf'} gradient")
    return gradient_result(name, params)


def gradcheck(s: Subject) -> CheckResult:
    name = "gradcheck"
    module = part_module(s, dtype=torch.float64, small=True)
    args = inputs(s, dtype=torch.float64, batch=1, length=4, d_model=8, heads=2, grad=True)
    try:
        torch.autograd.gradcheck(lambda *t: call(s, module, t), args, eps=1e-6, atol=1e-5)
    except Exception as err:
        return failed(name, f"float64, (1, 4, 8): {first_line(err)}; worst {jacobian_gap(lambda *t: call(s, module, t), args)}")
    return passed(name, "analytic and numerical Jacobians agree in float64 at (1, 4, 8)")


def compile_fullgraph(s: Subject) -> CheckResult:
    name = "compile_fullgraph"
    module = part_module(s)
    args = inputs(s)
    torch._dynamo.reset()
    compiled = torch.compile(module, fullgraph=True, backend="eager")
    try:
        with torch.no_grad():
            got = call(s, compiled, args)
    except Exception as err:
        return failed(name, f"torch.compile(fullgraph=True) cannot trace the {s.kind}: {first_line(err)}")
    finally:
        torch._dynamo.reset()
    with torch.no_grad():
        want = call(s, module, args)
    for i, (a, b) in enumerate(zip(got, want)):
        diff, where = max_difference(a, b)
        if diff > ATOL:
            return failed(name, f"compiled output {i} differs from eager by {diff:.3g} at {where}")
    return passed(name, "one graph (dynamo, backend 'eager'), equal to eager")


def capabilities(s: Subject) -> CheckResult:
    """A positional encoding's ``uses_*`` flags say which hooks do something: tried."""
    name = "capabilities"
    if s.kind != "positional":
        return not_applicable(name, f"a {s.kind} declares no capabilities")
    x, q, k = inputs(s)
    with torch.no_grad():
        embedded, q2, k2, bias = PositionalProbe(s.build())(x, q, k)
    acts = {"uses_embed": not torch.equal(embedded, x), "uses_rotate": not (torch.equal(q2, q) and torch.equal(k2, k)),
            "uses_bias": bias.dim() > 0}
    wrong = [f"{flag}={s.capability(flag)} but the hook {'does nothing' if s.capability(flag) else 'acts'}"
             for flag, acted in acts.items() if acted != s.capability(flag)]
    if wrong:
        return failed(name, "; ".join(wrong))
    return passed(name, "tried: " + ", ".join(f"{flag}={acted}" for flag, acted in acts.items()))
