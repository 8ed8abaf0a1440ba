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
from plugformer.testing.subject import HEADS, Subject, first_line, gradient_result, max_difference

ATOL = 1e-5


def qkv(*, batch: int = 2, heads: int = HEADS, kv_heads: int = HEADS, length: int = 12, head_dim: int = 8,
        dtype: torch.dtype = torch.float32, seed: int = 0, grad: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """Random q (B, H, L, Dh) and k, v (B, Hkv, L, Dh) from ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, length, head_dim, generator=gen).to(dtype)
    k = torch.randn(batch, kv_heads, length, head_dim, generator=gen).to(dtype)
    v = torch.randn(batch, kv_heads, length, head_dim, generator=gen).to(dtype)
    return tuple(t.requires_grad_(grad) for t in (q, k, v))


def shapes_dtypes(s: Subject) -> CheckResult:
    name = "shapes_dtypes"
    for dtype in (torch.float32, torch.bfloat16):
        for kv_heads, lq in ((HEADS, 12), (HEADS // 2, 12), (HEADS, 3)):
            kernel = s.build(kv_heads=kv_heads, dtype=dtype)
            q, k, v = qkv(kv_heads=kv_heads, dtype=dtype)
            q = q[:, :, -lq:]
            causal = lq < k.shape[-2]
            if causal and not (s.capability("supports_cache") and s.capability("supports_causal")):
                continue
            with torch.no_grad():
                out = kernel(q, k, v, causal=causal)
            where = f"{dtype}, H={HEADS}, Hkv={kv_heads}, Lq={lq}, Lk={k.shape[-2]}"
            if tuple(out.shape) != tuple(q.shape):
                return failed(name, f"{where}: output shape {tuple(out.shape)}, expected {tuple(q.shape)} (B, H, Lq, Dh)")
            if out.dtype != dtype:
                return failed(name, f"{where}: output dtype {out.dtype}, expected {dtype} (the input's)")
    return passed(name, "(B, H, Lq, Dh) out in float32 and bfloat16, with grouped kv heads and Lq < Lk")


def masked_rows_finite(s: Subject) -> CheckResult:
    name = "masked_rows_finite"
    if not s.capability("supports_mask"):
        return not_applicable(name, "the kernel declares supports_mask=False")
    kernel = s.build()
    q, k, v = qkv(grad=True)
    mask = torch.ones(2, 1, q.shape[-2], k.shape[-2], dtype=torch.bool)
    mask[0, :, 4] = False  # one query row with no key
    mask[1] = False  # a whole sequence of padding
    for causal in (False, True) if s.capability("supports_causal") else (False,):
        out = kernel(q, k, v, mask=mask, causal=causal)
        where = f"causal={causal}, mask blocking every key of query 4 in row 0 and all of row 1"
        if not torch.isfinite(out).all():
            return failed(name, f"{where}: {int((~torch.isfinite(out)).sum())} NaN/Inf outputs")
        blocked = torch.cat([out[0, :, 4].flatten(), out[1].flatten()])
        if blocked.abs().max() > 0:
            return failed(name, f"{where}: fully masked rows give {float(blocked.abs().max()):.3g}, expected zeros")
        grads = torch.autograd.grad(out.square().sum(), (q, k, v))
        for label, grad in zip("qkv", grads):
            if not torch.isfinite(grad).all():
                return failed(name, f"{where}: backward gives NaN/Inf in the gradient of {label}")
    return passed(name, "fully masked rows give zeros, forward and backward finite")


def gradients_reach_parameters(s: Subject) -> CheckResult:
    name = "gradients_reach_parameters"
    kernel = s.build()
    params = dict(kernel.named_parameters())
    if not params:
        return not_applicable(name, "the kernel has no parameters (the projections around it are checked with the model)")
    q, k, v = qkv()
    out = kernel(q, k, v, causal=s.capability("supports_causal"))
    if out.requires_grad:
        out.square().sum().backward()
    return gradient_result(name, params)


def gradcheck(s: Subject) -> CheckResult:
    name = "gradcheck"
    q, k, v = qkv(batch=1, heads=2, kv_heads=2, length=6, head_dim=4, dtype=torch.float64, grad=True)
    kernel = s.build(dtype=torch.float64, heads=2, d_model=8)
    for causal in (False, True) if s.capability("supports_causal") else (False,):
        try:
            torch.autograd.gradcheck(lambda *t: kernel(*t, causal=causal), (q, k, v), eps=1e-6, atol=1e-5)
        except Exception as err:  # gradcheck raises GradcheckError with the differing Jacobians
            return failed(name, f"float64, (1, 2, 6, 4), causal={causal}: {str(err).splitlines()[0]}")
    return passed(name, "analytic and numerical Jacobians of q, k, v agree in float64 (1, 2, 6, 4)")


def compile_fullgraph(s: Subject) -> CheckResult:
    name = "compile_fullgraph"
    kernel = s.build()
    q, k, v = qkv()
    mask = torch.ones(2, 1, 1, k.shape[-2], dtype=torch.bool)
    mask[1, ..., :3] = False
    causal = s.capability("supports_causal")
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
    tried, kernel = [], s.build()
    q, k, v = qkv()
    length = q.shape[-2]
    eye = torch.eye(length, dtype=torch.bool)
    with torch.no_grad():
        if s.capability("supports_mask"):
            out = kernel(q, k, v, mask=eye)  # each query attends only its own key
            diff, where = max_difference(out, v)
            if diff > ATOL:
                return failed(name, f"supports_mask: with a diagonal mask the output should be v itself; differs by {diff:.3g} at {where}")
            tried.append("mask")
        if s.capability("supports_causal") and s.capability("supports_mask"):
            causal = kernel(q, k, v, causal=True)
            masked = kernel(q, k, v, mask=torch.ones(length, length, dtype=torch.bool).tril())
            diff, where = max_difference(causal, masked)
            if diff > ATOL:
                return failed(name, f"supports_causal: causal=True differs from a lower-triangular mask by {diff:.3g} at {where}")
            tried.append("causal")
        if s.capability("supports_cache"):
            full = kernel(q, k, v, causal=True)
            for lq in (3, 7):
                tail = kernel(q[:, :, -lq:], k, v, causal=True)
                diff, where = max_difference(tail, full[:, :, -lq:])
                if diff > ATOL:
                    return failed(name, f"supports_cache: the last {lq} queries against all {length} keys differ from the full pass by {diff:.3g} at {where}")
            tried.append("cache")
        if s.capability("supports_bias"):
            def one_hot(q_idx: Tensor, k_idx: Tensor) -> Tensor:
                near = torch.where(q_idx == k_idx, 0.0, -60.0)  # exp(-60) ~ 1e-26: only the own key counts
                return near.expand(HEADS, *near.shape)
            out = kernel(q, k, v, score_bias=one_hot)
            diff, where = max_difference(out, v)
            if diff > 1e-4:
                return failed(name, f"supports_bias: a score bias of 0 on the own key and -60 elsewhere should give v itself; differs by {diff:.3g} at {where}")
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
    return passed(name, "tried: " + (", ".join(tried) or "nothing") + ("; refused at build: " + ", ".join(refused) if refused else ""))


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


def _pad(t: Tensor, n: int, side: str) -> Tensor:
    filler = torch.randn(*t.shape[:2], n, t.shape[-1]) * 3
    return torch.cat([filler, t] if side == "left" else [t, filler], dim=2)
