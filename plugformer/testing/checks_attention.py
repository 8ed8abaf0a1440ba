"""Checks of an attention kernel alone: q (B, H, Lq, Dh), k/v (B, Hkv, Lk, Dh) -> (B, H, Lq, Dh).

Each function takes a :class:`~plugformer.testing.subject.Subject` of kind ``attention`` and
returns a :class:`~plugformer.testing.result.CheckResult`; the references are closed forms
(a one-hot score bias or mask selects one value row exactly) or the kernel itself on a shorter
input, never another kernel.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from plugformer.registry.errors import SpecError
from plugformer.testing.result import CheckResult, failed, not_applicable, passed
from plugformer.testing.subject import HEADS, Subject, first_line, gradient_result, jacobian_gap, max_difference

ATOL = 1e-5
CAUSAL_ATOL = 1e-6


def qkv(*, batch: int = 2, heads: int = HEADS, kv_heads: int = HEADS, length: int = 12, head_dim: int = 8,
        dtype: torch.dtype = torch.float32, seed: int = 0, grad: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """Random q (B, H, L, Dh) and k, v (B, Hkv, L, Dh) from ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, length, head_dim, generator=gen).to(dtype)
    k = torch.randn(batch, kv_heads, length, head_dim, generator=gen).to(dtype)
    v = torch.randn(batch, kv_heads, length, head_dim, generator=gen).to(dtype)
    return tuple(t.requires_grad_(grad) for t in (q, k, v))


#: (Hkv, Lq, Lk, causal): self, grouped kv heads, bidirectional cross (Lq < Lk), and the last
#: queries of a causal pass (a cache's chunk; only where the kernel declares supports_cache).
SHAPES = ((HEADS, 12, 12, False), (HEADS // 2, 12, 12, False), (HEADS, 5, 12, False), (HEADS, 3, 12, True))


def shaped(s: Subject, kv_heads: int, lq: int, lk: int, *, dtype: torch.dtype = torch.float32,
           grad: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    q, k, v = qkv(kv_heads=kv_heads, length=lk, dtype=dtype)
    q = q[:, :, -lq:].detach().clone()
    return tuple(t.requires_grad_(grad) for t in (q, k, v))


def _shapes(s: Subject) -> list[tuple[int, int, int, bool]]:
    cache = s.capability("supports_cache") and s.causal
    return [shape for shape in SHAPES if not shape[3] or cache]


def shapes_dtypes(s: Subject) -> CheckResult:
    name = "shapes_dtypes"
    for dtype in (torch.float32, torch.bfloat16):
        for kv_heads, lq, lk, causal in _shapes(s):
            kernel = s.build(kv_heads=kv_heads, dtype=dtype, causal=causal, cross=lq < lk and not causal and s.attends_across())
            q, k, v = shaped(s, kv_heads, lq, lk, dtype=dtype)
            with torch.no_grad():
                out = kernel(q, k, v, causal=causal)
            where = f"{dtype}, H={HEADS}, Hkv={kv_heads}, Lq={lq}, Lk={lk}, causal={causal}"
            if tuple(out.shape) != tuple(q.shape):
                return failed(name, f"{where}: output shape {tuple(out.shape)}, expected {tuple(q.shape)} (B, H, Lq, Dh)")
            if out.dtype != dtype:
                return failed(name, f"{where}: output dtype {out.dtype}, expected {dtype} (the input's)")
            if not torch.isfinite(out).all():
                return failed(name, f"{where}: {int((~torch.isfinite(out)).sum())} NaN/Inf outputs")
    wrong = parameter_dtypes(s.build(dtype=torch.float64), torch.float64)
    if wrong:
        return failed(name, f"built with dtype=torch.float64, {wrong}")
    return passed(name, "finite (B, H, Lq, Dh) out in float32 and bfloat16, with grouped kv heads, bidirectional "
                  "Lq < Lk and causal Lq < Lk; parameters built in the dtype asked for")


def parameter_dtypes(module: torch.nn.Module, dtype: torch.dtype) -> str:
    """Which parameters of ``module`` are not in ``dtype`` ('' when all are)."""
    wrong = [f"{key} is {p.dtype}" for key, p in module.named_parameters() if p.dtype != dtype]
    return ", ".join(wrong[:4])


def masked_rows_finite(s: Subject) -> CheckResult:
    name = "masked_rows_finite"
    if not s.capability("supports_mask"):
        return not_applicable(name, "the kernel declares supports_mask=False")
    q, k, v = qkv(grad=True)
    mask = torch.ones(2, 1, q.shape[-2], k.shape[-2], dtype=torch.bool)
    mask[0, :, 4] = False  # one query row with no key
    mask[1] = False  # a whole sequence of padding
    padding = (torch.arange(k.shape[-2])[None, :] < torch.tensor([0, 7])[:, None])[:, None, None, :]  # (B, 1, 1, Lk)
    cases = [(mask, causal, f"causal={causal}, mask blocking every key of query 4 in row 0 and all of row 1",
              torch.cat([torch.zeros(1, q.shape[1], dtype=torch.bool), torch.ones(1, q.shape[1], dtype=torch.bool)]))
             for causal in ((False, True) if s.causal else (False,))]
    cases.append((padding, False, "key padding mask (B, 1, 1, Lk) with every key of row 0 padded", None))
    for allowed, causal, where, _ in cases:
        out = s.build(causal=causal)(q, k, v, mask=allowed, causal=causal)
        if not torch.isfinite(out).all():
            return failed(name, f"{where}: {int((~torch.isfinite(out)).sum())} NaN/Inf outputs")
        blocked = out[0].flatten() if allowed is padding else torch.cat([out[0, :, 4].flatten(), out[1].flatten()])
        if blocked.abs().max() > 0:
            return failed(name, f"{where}: fully masked rows give {float(blocked.detach().abs().max()):.3g}, expected zeros")
        grads = torch.autograd.grad(out.square().sum(), (q, k, v))
        for label, grad in zip("qkv", grads):
            if not torch.isfinite(grad).all():
                return failed(name, f"{where}: backward gives NaN/Inf in the gradient of {label}")
    return passed(name, "fully masked rows give zeros (full masks and key padding), forward and backward finite")


def gradients_reach_parameters(s: Subject) -> CheckResult:
    """Self, grouped-kv and cross shapes: q, k, v get finite gradients, every parameter a finite nonzero one."""
    name = "gradients_reach_parameters"
    params: dict = {}
    for kv_heads, lq, lk, causal in _shapes(s):
        if causal:
            continue
        kernel = s.build(kv_heads=kv_heads, causal=s.causal and lq == lk, cross=lq < lk and s.attends_across())
        params = dict(kernel.named_parameters())
        q, k, v = shaped(s, kv_heads, lq, lk, grad=True)
        kernel(q, k, v, causal=s.causal and lq == lk).square().sum().backward()
        where = f"Hkv={kv_heads}, Lq={lq}, Lk={lk}"
        for label, t in zip("qkv", (q, k, v)):
            if t.grad is None or not torch.isfinite(t.grad).all():
                return failed(name, f"{where}: the gradient of {label} is {'missing' if t.grad is None else 'NaN/Inf'}")
        if params:
            result = gradient_result(name, params)
            if result.failed:
                return failed(name, f"{where}: {result.message}")
    if not params:
        return passed(name, "no parameters (the projections around it are checked with the model); q, k, v get finite gradients")
    return gradient_result(name, params)


def gradcheck(s: Subject) -> CheckResult:
    name = "gradcheck"
    q, k, v = qkv(batch=1, heads=2, kv_heads=2, length=6, head_dim=4, dtype=torch.float64, grad=True)
    for causal in (False, True) if s.causal else (False,):
        kernel = s.build(dtype=torch.float64, heads=2, d_model=8, causal=causal)
        try:
            torch.autograd.gradcheck(lambda *t: kernel(*t, causal=causal), (q, k, v), eps=1e-6, atol=1e-5)
        except Exception as err:  # gradcheck raises GradcheckError with the differing Jacobians
            gap = jacobian_gap(lambda *t: kernel(*t, causal=causal), (q, k, v))
            return failed(name, f"float64, (1, 2, 6, 4), causal={causal}: {first_line(err)}; worst {gap}")
    return passed(name, "analytic and numerical Jacobians of q, k, v agree in float64 (1, 2, 6, 4)")


def compile_fullgraph(s: Subject) -> CheckResult:
    name = "compile_fullgraph"
    kernel = s.build(causal=s.causal)
    q, k, v = qkv()
    mask = torch.ones(2, 1, 1, k.shape[-2], dtype=torch.bool)
    mask[1, ..., :3] = False
    causal = s.causal
    kwargs = {"mask": mask if s.capability("supports_mask") else None, "causal": causal}
    torch._dynamo.reset()
    compiled = torch.compile(kernel, fullgraph=True, backend="eager")
    try:
        with torch.no_grad():
            got = compiled(q, k, v, **kwargs)
    except Exception as err:
        return failed(name, f"torch.compile(fullgraph=True) cannot trace the kernel: {first_line(err)}")
    finally:
        torch._dynamo.reset()
    with torch.no_grad():
        want = kernel(q, k, v, **kwargs)
    diff, where = max_difference(got, want)
    if diff > ATOL:
        return failed(name, f"compiled output differs from eager by {diff:.3g} at {where}")
    return passed(name, "one graph (dynamo, backend 'eager'), equal to eager; mask and causal given")


def capabilities(s: Subject) -> CheckResult:
    """Each declared capability is tried; each undeclared one must be refused at build time."""
    name = "capabilities"
    tried, kernel = [], s.build(causal=s.causal)
    q, k, v = qkv()
    length = q.shape[-2]
    eye = torch.eye(length, dtype=torch.bool)
    with torch.no_grad():
        if s.capability("supports_mask"):
            blocked = torch.tensor([2, 5, 9])
            columns = torch.ones(length, length, dtype=torch.bool)
            columns[:, blocked] = False
            changed_k, changed_v = _perturbed(k, blocked), _perturbed(v, blocked)
            diff, where = max_difference(kernel(q, changed_k, changed_v, mask=columns), kernel(q, k, v, mask=columns))
            if diff > ATOL:
                return failed(name, f"supports_mask: keys 2, 5, 9 are masked for every query, yet changing them moves the output by {diff:.3g} at {where}")
            if s.causal:  # sparse kernels always reach a query's own key under causal attention
                diff, where = max_difference(kernel(q, k, v, mask=eye, causal=True), v)
                if diff > ATOL:
                    return failed(name, f"supports_mask: with a diagonal mask the output should be v itself; differs by {diff:.3g} at {where}")
            tried.append("mask")
        if s.causal:
            t = length // 2 - 1
            future = torch.arange(t, length)
            diff, where = max_difference(kernel(q, _perturbed(k, future), _perturbed(v, future), causal=True)[:, :, :t],
                                         kernel(q, k, v, causal=True)[:, :, :t])
            if diff > ATOL:
                return failed(name, f"supports_causal: changing keys/values {t}..{length - 1} moves causal outputs before {t} by {diff:.3g} at {where}")
            tried.append("causal")
        if s.capability("supports_cache") and s.causal:
            full = kernel(q, k, v, causal=True)
            for lq in (3, 7):
                tail = kernel(q[:, :, -lq:], k, v, causal=True)
                diff, where = max_difference(tail, full[:, :, -lq:])
                if diff > ATOL:
                    return failed(name, f"supports_cache: the last {lq} queries against all {length} keys differ from the full pass by {diff:.3g} at {where}")
            tried.append("cache")
        if s.capability("supports_bias"):
            failure = _score_bias_failure(kernel, q, k, v, s.causal)
            if failure:
                return failed(name, f"supports_bias: {failure}")
            tried.append("score_bias")
    refused = []
    for flag, context in (("supports_causal", {"causal": True}), ("supports_bias", {"score_bias": True})):
        if s.capability(flag):
            continue
        try:
            s.build(**context)
        except SpecError:
            refused.append(flag.removeprefix("supports_"))
            continue
        return failed(name, f"declares {flag}=False but building it with {context} was not refused")
    note = "; refused at build: " + ", ".join(refused) if refused else ""
    if s.capability("supports_causal") and not s.causal:
        note += f"; causal and cache not tried: {s.causal_refusal()}"
    return passed(name, "tried: " + (", ".join(tried) or "nothing") + note)


def kernel_causality(s: Subject) -> Optional[CheckResult]:
    """Alone: changing q, k, v from t on, for every t, leaves causal outputs before t unchanged
    (within 1e-6). None on a pass or where the kernel does not build causal."""
    if not s.causal:
        return None
    kernel = s.build(causal=True)
    q, k, v = qkv()
    length = q.shape[-2]
    with torch.no_grad():
        base = kernel(q, k, v, causal=True)
        for t in range(1, length):
            future = torch.arange(t, length)
            out = kernel(*(_perturbed(x, future) for x in (q, k, v)), causal=True)
            diff, where = max_difference(out[:, :, :t], base[:, :, :t])
            if diff > CAUSAL_ATOL:
                return failed("causality", f"kernel alone: changing q, k, v at {t}..{length - 1} moves the causal output "
                              f"at query {where[2]} by {diff:.3g}: query {where[2]} sees the future")
    return None


def kernel_padding_invariance(s: Subject) -> Optional[CheckResult]:
    """Bidirectional key padding (left and right): real queries equal the row alone. None on a pass."""
    name = "padding_invariance"
    if not s.capability("supports_mask"):
        return None
    kernel = s.build()
    q, k, v = qkv(batch=1, length=9)
    with torch.no_grad():
        alone = kernel(q, k, v)
        for side in ("left", "right"):
            pad = 5
            padded = [_pad(t, pad, side) for t in (q, k, v)]
            mask = torch.ones(1, 1, 1, 9 + pad, dtype=torch.bool)
            if side == "left":
                mask[..., :pad] = False
            else:
                mask[..., 9:] = False
            out = kernel(*padded, mask=mask)
            real = out[:, :, pad:] if side == "left" else out[:, :, :9]
            diff, where = max_difference(real, alone)
            if diff > ATOL:
                return failed(name, f"kernel, bidirectional, {pad} {side} pads (masked): real queries differ from the row alone by {diff:.3g} at {where}")
    return None


def _score_bias_failure(kernel, q: Tensor, k: Tensor, v: Tensor, causal: bool) -> Optional[str]:
    """Causal: a bias of 0 on the own key and -60 elsewhere gives v itself (every kernel reaches the
    own key). Bidirectional, where sparse routing may skip the own key: a bias changes the output,
    a constant bias does not."""
    def one_hot(q_idx: Tensor, k_idx: Tensor) -> Tensor:
        near = torch.where(q_idx == k_idx, 0.0, -60.0)  # exp(-60) ~ 1e-26: only the own key counts
        return near.expand(HEADS, *near.shape)

    def constant(q_idx: Tensor, k_idx: Tensor) -> Tensor:
        return torch.full((HEADS, *torch.broadcast_shapes(q_idx.shape, k_idx.shape)), 3.0)

    def distance(q_idx: Tensor, k_idx: Tensor) -> Tensor:
        return -(q_idx - k_idx).abs().float().expand(HEADS, *torch.broadcast_shapes(q_idx.shape, k_idx.shape))

    if causal:
        diff, where = max_difference(kernel(q, k, v, score_bias=one_hot, causal=True), v)
        if diff > 1e-4:
            return f"a causal score bias of 0 on the own key and -60 elsewhere should give v itself; differs by {diff:.3g} at {where}"
        return None
    plain = kernel(q, k, v)
    diff, where = max_difference(kernel(q, k, v, score_bias=constant), plain)
    if diff > ATOL:
        return f"a constant score bias of 3 should change nothing (softmax is shift-invariant); moves the output by {diff:.3g} at {where}"
    if max_difference(kernel(q, k, v, score_bias=distance), plain)[0] <= ATOL:
        return "a score bias of -|i - j| leaves the output unchanged: the bias is ignored"
    return None


def _perturbed(t: Tensor, positions: Tensor) -> Tensor:
    """``t`` (B, H, L, Dh) with the rows at ``positions`` replaced by large other values."""
    out = t.clone()
    out[:, :, positions] = 5 * torch.randn(*t.shape[:2], len(positions), t.shape[-1])
    return out


def _pad(t: Tensor, n: int, side: str) -> Tensor:
    filler = torch.randn(*t.shape[:2], n, t.shape[-1]) * 3
    return torch.cat([filler, t] if side == "left" else [t, filler], dim=2)
